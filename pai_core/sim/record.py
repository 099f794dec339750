"""``pai sim record``: scripted-expert episodes, or a policy's own closed-loop episodes, written as a
LeRobot dataset (image mode) and, for one episode, as a rosbag2 recording.

The dataset holds what the policy may use (front camera, six joint positions) and the action taken (the
expert's, or the policy's as ``lerobot-record --policy.path`` records it); ``pai_sim.json`` beside the
LeRobot metadata records each episode's seed, perturbation and success. A policy's recordings are what
the alarm is best calibrated on: the frames it sees when it drives the robot itself, which an expert's
recordings only approximate (docs/trainer.md).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..errors import ConfigError, UsageError
from .bag import BagFrame, write_bag
from .env import ACTION_NAMES, CAMERA, JOINT_NAMES, TASK, PickCubeSim, SimConfig
from .expert import Phase, PickExpert

SIDECAR = "pai_sim.json"


@dataclass
class RecordConfig:
    """Args:
    root: dataset folder to create (must not exist).
    repo_id: LeRobot repo id stored in the dataset metadata.
    episodes: episodes to write.
    seed: episode ``i`` places the cube with seed ``seed + i``.
    keep_failed: also write episodes in which the expert failed (default for perturbed scenes: their
        frames are what OOD detection is measured on); otherwise failed ones are counted and skipped.
    hold_steps: frames recorded after the cube is lifted, holding it.
    bag_path: also write the first episode as a rosbag2 (MCAP) folder here.
    action_noise: DART noise injection (Laskey et al. 2017): the robot executes the expert's action plus
        Gaussian noise on ``dx, dy, dz`` while it approaches the cube, and the dataset records the clean
        expert action, so the policy also learns how to recover from states just off the expert's path.
        Each episode draws its noise scale uniformly from ``[0, action_noise]`` (action units; 0: none).
    sim: simulation settings (image size, perturbation, ...).
    policy_path: record closed-loop episodes of this LeRobot policy (its own actions, one per frame)
        instead of the expert's ("": the expert).
    """

    root: Path
    repo_id: str = "pai/so101_pick_cube"
    episodes: int = 20
    seed: int = 0
    keep_failed: bool | None = None
    hold_steps: int = 5
    bag_path: Path | None = None
    action_noise: float = 0.0
    sim: SimConfig = field(default_factory=SimConfig)
    policy_path: str = ""

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.policy_path and self.action_noise:
            raise ConfigError(f"action_noise={self.action_noise}: noise injection is for the expert, not a policy")
        if self.episodes < 1:
            raise ConfigError(f"episodes={self.episodes}: record at least one episode")
        if not (math.isfinite(self.action_noise) and 0.0 <= self.action_noise <= 1.0):
            raise ConfigError(f"action_noise={self.action_noise}: expected a noise scale within 0..1 action units")
        if self.keep_failed is None:
            self.keep_failed = self.sim.perturbation != "none"


@dataclass
class Step:
    image: np.ndarray
    state: np.ndarray
    velocity: np.ndarray
    action: np.ndarray  # the expert's, recorded
    timestamp: float
    executed: np.ndarray  # what the robot was sent (the action plus DART noise, if any)


@dataclass
class Episode:
    seed: int
    steps: list[Step]
    success: bool


def run_expert(sim: PickCubeSim, seed: int, hold_steps: int = 5, action_noise: float = 0.0) -> Episode:
    """One expert episode: every frame with the expert's action in it, until the cube is held up for
    ``hold_steps`` frames or ``sim.config.max_steps`` run out.

    ``action_noise`` > 0: the executed action gets N(0, scale^2) noise on ``dx, dy, dz`` while the expert
    approaches the cube (hover and descend), with ``scale`` drawn per episode from ``[0, action_noise]``;
    the recorded action stays the clean one (``RecordConfig.action_noise``)."""
    expert = PickExpert(sim.config.action_scale)
    obs = sim.reset(seed)
    noise_rng = np.random.default_rng([seed, 0xDA27])
    scale = float(noise_rng.uniform(0.0, action_noise)) if action_noise > 0 else 0.0
    steps: list[Step] = []
    success, after = False, 0
    while len(steps) < sim.config.max_steps and after <= hold_steps:
        action = expert.act(sim.grasp_point, sim.block_pos)
        velocity = joint_velocities(sim)
        executed = action
        if scale > 0 and expert.phase in (Phase.HOVER, Phase.DESCEND):
            executed = action.copy()
            executed[:3] += noise_rng.normal(0.0, scale, 3).astype(np.float32)
        state = cast(np.ndarray, obs.state)  # the sim sets it
        steps.append(Step(obs.images[CAMERA], state, velocity, action, obs.timestamp, executed))
        obs, picked = sim.step(executed)
        success = success or picked
        after += int(success)
    return Episode(seed, steps, success)


def run_policy(sim: PickCubeSim, engine: Any, seed: int, hold_steps: int = 5) -> Episode:
    """One closed-loop episode of ``engine`` (an ``Introspector``): every frame with the action the policy
    chose for it, until the cube is held up for ``hold_steps`` frames or ``sim.config.max_steps`` run out."""
    obs = sim.reset(seed)
    engine.reset()
    steps: list[Step] = []
    success, after = False, 0
    while len(steps) < sim.config.max_steps and after <= hold_steps:
        action = np.asarray(engine.step(obs).action, np.float32).reshape(-1)
        state = cast(np.ndarray, obs.state)
        steps.append(Step(obs.images[CAMERA], state, joint_velocities(sim), action, obs.timestamp, action))
        obs, picked = sim.step(action)
        success = success or picked
        after += int(success)
    return Episode(seed, steps, success)


def joint_velocities(sim: PickCubeSim) -> np.ndarray:
    model = sim.env.model
    return np.asarray([sim.env.data.qvel[model.joint(n).dofadr[0]] for n in JOINT_NAMES], dtype=np.float32)


def dataset_features(sim: SimConfig) -> dict:
    return {
        CAMERA: {"dtype": "image", "shape": (sim.height, sim.width, 3), "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (len(JOINT_NAMES),), "names": list(JOINT_NAMES)},
        "action": {"dtype": "float32", "shape": (len(ACTION_NAMES),), "names": list(ACTION_NAMES)},
    }


def record(config: RecordConfig, progress: bool = True) -> dict:
    """Run the expert (or the policy) and write the dataset (and bag); returns a summary (also in
    ``pai_sim.json``)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from tqdm import tqdm

    if config.root.exists():
        raise UsageError(f"Dataset folder {config.root} already exists; LeRobot needs a new folder")
    engine = None
    if config.policy_path:
        from ..engine import IntrospectionConfig, Introspector

        engine = Introspector.from_pretrained(config.policy_path, IntrospectionConfig(rollout=False, keep_tokens=False))
    config.root.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    dataset = LeRobotDataset.create(
        config.repo_id, config.sim.fps, dataset_features(config.sim), root=config.root, use_videos=False
    )
    written: list[dict] = []
    skipped: list[dict] = []
    bag_frames = 0
    who = "policy" if engine is not None else "expert"
    bar = tqdm(range(config.episodes), desc=f"record {who} {config.sim.perturbation}", unit="ep", disable=not progress)
    with PickCubeSim(config.sim) as sim:
        for i in bar:
            if engine is not None:
                episode = run_policy(sim, engine, config.seed + i, config.hold_steps)
            else:
                episode = run_expert(sim, config.seed + i, config.hold_steps, config.action_noise)
            info = {"seed": episode.seed, "success": episode.success, "frames": len(episode.steps)}
            if not episode.success and not config.keep_failed:
                skipped.append(info)
                continue
            for step in episode.steps:
                dataset.add_frame(
                    {CAMERA: step.image, "observation.state": step.state, "action": step.action, "task": TASK}
                )
            dataset.save_episode()
            info["episode_index"] = len(written)
            written.append(info)
            if config.bag_path is not None and len(written) == 1:
                bag_frames = write_bag(
                    config.bag_path,
                    (BagFrame(s.timestamp, s.image, s.state, s.velocity) for s in episode.steps),
                    JOINT_NAMES,
                )
            bar.set_postfix(ok=sum(e["success"] for e in written), skipped=len(skipped))
    dataset.finalize()
    attempted = written + skipped
    summary = {
        "repo_id": config.repo_id,
        "root": str(config.root),
        "perturbation": config.sim.perturbation,
        "sim": asdict(config.sim),
        "episodes": written,
        "skipped_failed": skipped,
        "actor": config.policy_path or "expert",
        "success_rate": sum(e["success"] for e in attempted) / len(attempted),
        "frames": sum(e["frames"] for e in written),
        "bag": str(config.bag_path) if config.bag_path else None,
        "bag_frames": bag_frames,
        "action_noise": config.action_noise,
        "seconds": round(time.perf_counter() - start, 1),
    }
    (config.root / SIDECAR).write_text(json.dumps(summary, indent=2))
    if not written:
        raise UsageError(
            f"The {who} failed all {len(skipped)} episodes in scene {config.sim.perturbation!r}; "
            "nothing to write (use keep_failed to keep them)"
        )
    return summary


def load_summary(root: str | Path) -> dict:
    """The ``pai_sim.json`` of a dataset recorded by ``record``."""
    path = Path(root) / SIDECAR
    if not path.is_file():
        raise UsageError(f"{path} not found: {root} was not recorded by `pai sim record`")
    return json.loads(path.read_text())
