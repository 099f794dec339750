"""``pai sim evaluate-policy``: closed-loop success rate of a policy in the simulator.

Actions come from ``Introspector.step`` (LeRobot's action queue, bit for bit the policy's own
``select_action``), so the rate measured is the rate of the policy pai introspects.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..observation import Observation
from .env import CAMERA, PickCubeSim, SimConfig


@dataclass
class EvalConfig:
    """Args:
    policy_path: LeRobot pretrained_model folder.
    episodes: closed-loop episodes.
    seed: episode ``i`` uses seed ``seed + i`` (default 10000: cube positions the expert's training
        recordings, seeds 0.., did not use).
    output_dir: where ``evaluation.json`` and ``rollouts.mp4`` go ("" for none).
    video_episodes: episodes written to the video.
    sim: simulation settings (image size, perturbation).
    """

    policy_path: str
    episodes: int = 10
    seed: int = 10_000
    output_dir: str = ""
    video_episodes: int = 2
    sim: SimConfig = field(default_factory=SimConfig)

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ConfigError(f"episodes={self.episodes}: evaluate at least one episode")


def camera_effect(engine: Any, first_frames: list[Observation]) -> float:
    """How much the policy's action chunk depends on its camera: the mean absolute change of the chunk (in
    action units) when each observation's images are replaced by black ones. About 0: the policy is blind
    and replays an average trajectory (docs/demo.md)."""
    import dataclasses

    changes = []
    for obs in first_frames:
        black = dataclasses.replace(obs, images={k: np.zeros_like(v) for k, v in obs.images.items()})
        chunks = []
        for o in (obs, black):
            engine.reset()
            chunks.append(np.asarray(engine.step(o).action_chunk, dtype=np.float64))
        changes.append(float(np.abs(chunks[0] - chunks[1]).mean()))
    engine.reset()
    return float(np.mean(changes)) if changes else 0.0


def evaluate_policy(cfg: EvalConfig, progress: bool = True) -> dict:
    from tqdm import tqdm

    from ..engine import IntrospectionConfig, Introspector
    from .record import run_policy

    engine = Introspector.from_pretrained(cfg.policy_path, IntrospectionConfig(rollout=False, keep_tokens=False))
    results, video, first_frames = [], [], []
    start = time.perf_counter()
    bar = tqdm(range(cfg.episodes), desc="evaluate policy", unit="ep", disable=not progress)
    with PickCubeSim(cfg.sim) as sim:
        for i in bar:
            episode = run_policy(sim, engine, cfg.seed + i, hold_steps=0)  # stop at the pick
            first = episode.steps[0]
            first_frames.append(Observation({CAMERA: first.image}, first.state, first.timestamp, frame_index=0))
            if i < cfg.video_episodes:
                video += [s.image for s in episode.steps]
            results.append({"seed": episode.seed, "success": episode.success, "steps": len(episode.steps)})
            bar.set_postfix(success=f"{sum(r['success'] for r in results)}/{len(results)}")
    rate = sum(r["success"] for r in results) / len(results)
    summary = {
        "policy_path": cfg.policy_path,
        "perturbation": cfg.sim.perturbation,
        "episodes": len(results),
        "successes": sum(r["success"] for r in results),
        "success_rate": rate,
        "seconds": round(time.perf_counter() - start, 1),
        "camera_effect": round(camera_effect(engine, first_frames), 6),
        "results": results,
    }
    if cfg.output_dir:
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.json").write_text(json.dumps(summary, indent=2))
        if video:
            from ..video_writer import write_mp4

            write_mp4(out / "rollouts.mp4", (np.repeat(np.repeat(f, 2, 0), 2, 1) for f in video), cfg.sim.fps)
            summary["video"] = str(out / "rollouts.mp4")
    return summary
