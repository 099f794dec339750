"""Disturbances that make a pick-cube episode fail mid-way: the cube pushed away, the cube slipping out of
the gripper, an object appearing next to the cube.

The named perturbations (``scene.py``) change the scene from the first frame; a disturbance changes it
at one step of an otherwise clean episode, which is what a closed-loop failure benchmark needs: the
episode starts in distribution and is lost at a known step. Each acts on the MuJoCo state of a
``PickCubeSim`` (the cube's free joint, a mocap body) between two control steps, so the next frame the
policy and pai see is the first one that shows it.

- ``push``: at ``step``, the cube slides ``distance`` along the table (a hand pushing it away), in a
  direction drawn from the episode's seed that keeps it in the gripper's reach and clear of the jaws.
- ``slip``: at the first step from ``step`` on at which the cube is held (lifted >= 1.5 cm and still
  between the jaws), it drops back onto the table ``distance`` beside the gripper.
- ``appear``: at ``step``, a box (4 x 4 x 5 cm, orange) stands next to the cube, on a side clear of the
  gripper. It is a mocap body of a scene made for this (``intruder_scene_file``) that waits out of view
  until then (``reset`` puts it back there), so frames before it are the clean scene's frames.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from ..errors import ConfigError, UsageError
from .env import BLOCK_XY_BOUNDS, PickCubeSim, SimConfig
from .scene import find, scene_xml, write_scene

Kind = Literal["push", "slip", "appear"]
KINDS: tuple[str, ...] = get_args(Kind)

# name -> what it does (shown by the failure benchmark)
DISTURBANCES: dict[str, str] = {
    "push": "the cube pushed away along the table mid-episode",
    "slip": "the cube slipping out of the gripper after it was grasped",
    "appear": "a box appearing next to the cube mid-episode",
}
# Steps chosen on the scripted expert's timeline (hover 0-7, descend 7-13, close 14-21, lift 22-34): the
# push comes while the gripper descends, the box while it still hovers above the cube's height.
DEFAULT_STEPS: dict[str, int] = {"push": 10, "slip": 0, "appear": 8}
DEFAULT_DISTANCE: dict[str, float] = {"push": 0.06, "slip": 0.05, "appear": 0.015}

INTRUDER = "intruder"
INTRUDER_HALF_SIZE = (0.02, 0.02, 0.025)
HIDDEN_POS = (-2.0, 2.5, 0.1)  # far outside the camera's view and the arm's reach
HELD_LIFT = 0.015  # cube rise (m) above its resting height that counts as held
HELD_DISTANCE = 0.03  # cube centre within this of the grasp point
JAW_CLEARANCE = 0.045  # a moved cube or the box stays this far (xy) from the grasp point


@dataclass(frozen=True)
class Disturbance:
    """One disturbance of an episode.

    Args:
        kind: "push", "slip" or "appear" (``DISTURBANCES``).
        step: the control step it happens at (for "slip": the earliest; it waits for a grasp); -1: the
            kind's default (``DEFAULT_STEPS``).
        distance: metres: how far the cube is pushed ("push"), where it lands from the gripper ("slip"),
            the gap between the cube and the box ("appear"); -1: the kind's default.
    """

    kind: Kind
    step: int = -1
    distance: float = -1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"Unknown disturbance {self.kind!r}; expected one of {list(KINDS)}")
        if self.step == -1:
            object.__setattr__(self, "step", DEFAULT_STEPS[self.kind])
        if self.distance == -1.0:
            object.__setattr__(self, "distance", DEFAULT_DISTANCE[self.kind])
        if self.step < 0:
            raise ConfigError(f"disturbance step={self.step} must be >= 0 (or -1 for the default)")
        if not self.distance > 0:
            raise ConfigError(f"disturbance distance={self.distance} must be > 0 m (or -1 for the default)")

    @property
    def needs_intruder(self) -> bool:
        """Whether the simulator must be built from ``intruder_scene_file``."""
        return self.kind == "appear"

    def due(self, sim: PickCubeSim, step: int) -> bool:
        """Whether to apply it before the frame of ``step`` (call once per step until it is applied)."""
        if step < self.step:
            return False
        return cube_held(sim) if self.kind == "slip" else True

    def apply(self, sim: PickCubeSim, rng: np.random.Generator) -> dict:
        """Change the simulation; returns what changed (positions before and after, in metres)."""
        before = sim.block_pos.round(4).tolist()
        if self.kind == "push":
            xy = place_away(rng, sim.block_pos[:2], self.distance, sim.grasp_point[:2])
            move_cube(sim, xy)
        elif self.kind == "slip":
            xy = place_away(rng, sim.grasp_point[:2], self.distance, sim.grasp_point[:2])
            move_cube(sim, xy)
        else:
            show_intruder(sim, intruder_spot(rng, sim, self.distance))
        out = {"kind": self.kind, "cube_before": before, "cube_after": sim.block_pos.round(4).tolist()}
        if self.kind == "appear":
            out["object_at"] = intruder_pos(sim).round(4).tolist()
        return out


@dataclass
class Disturber:
    """A disturbance's progress through one episode: applies it once, at the first step it is due."""

    disturbance: Disturbance
    seed: int
    applied_at: int | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng([self.seed, 0x5EED])

    def maybe_apply(self, sim: PickCubeSim, step: int) -> bool:
        """Apply the disturbance before the frame of ``step`` when it is due; True when it was applied now."""
        if self.applied_at is not None or not self.disturbance.due(sim, step):
            return False
        self.info = self.disturbance.apply(sim, self.rng) | {"step": step}
        self.applied_at = step
        return True


# ------------------------------------------------------------------------------------------ state edits
def cube_resting_z(sim: PickCubeSim) -> float:
    return sim.block_half_size


def cube_held(sim: PickCubeSim) -> bool:
    """The cube is lifted off the table and still between the jaws (what a grasp looks like in the state)."""
    pos = sim.block_pos
    lifted = pos[2] > cube_resting_z(sim) + HELD_LIFT
    return bool(lifted and np.linalg.norm(pos - sim.grasp_point) < HELD_DISTANCE)


def move_cube(sim: PickCubeSim, xy: np.ndarray) -> None:
    """Put the cube upright and at rest on the table at ``xy``."""
    import mujoco

    data = sim.env.data
    joint = data.jnt("block")
    joint.qpos[:3] = (float(xy[0]), float(xy[1]), cube_resting_z(sim))
    joint.qpos[3:7] = (1.0, 0.0, 0.0, 0.0)
    joint.qvel[:] = 0.0
    mujoco.mj_forward(sim.env.model, data)


def place_away(
    rng: np.random.Generator, origin: np.ndarray, distance: float, jaws: np.ndarray, tries: int = 64
) -> np.ndarray:
    """A point ``distance`` from ``origin`` (xy) inside the cube's reachable box and clear of the jaws;
    directions are drawn from ``rng``, the best-clearing one wins when none fits."""
    origin, jaws = np.asarray(origin, float), np.asarray(jaws, float)
    lo, hi = BLOCK_XY_BOUNDS
    best: np.ndarray | None = None
    best_score = -np.inf
    for angle in rng.uniform(0.0, 2 * np.pi, tries):
        xy = origin + distance * np.array([np.cos(angle), np.sin(angle)])
        outside = float(np.sum(np.maximum(lo - xy, 0) + np.maximum(xy - hi, 0)))
        clear = float(np.linalg.norm(xy - jaws))
        if outside == 0.0 and clear >= JAW_CLEARANCE:
            return xy
        score = -outside * 10 + min(clear, JAW_CLEARANCE)
        if score > best_score:
            best, best_score = xy, score
    if best is None:
        raise ValueError(f"tries={tries} must be >= 1")
    return np.clip(best, lo, hi)


def intruder_spot(rng: np.random.Generator, sim: PickCubeSim, gap: float) -> np.ndarray:
    """Where the box stands: beside the cube (``gap`` between their faces), on a side drawn from ``rng``
    among those clear of the jaws (the farthest from them when none is)."""
    cube = sim.block_pos
    reach = sim.block_half_size + gap + INTRUDER_HALF_SIZE[0]
    sides = [np.array(d, float) for d in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    spots = [cube[:2] + reach * d for d in sides]
    clear = [s for s in spots if np.linalg.norm(s - sim.grasp_point[:2]) >= JAW_CLEARANCE]
    xy = (
        clear[int(rng.integers(len(clear)))]
        if clear
        else max(spots, key=lambda s: float(np.linalg.norm(s - sim.grasp_point[:2])))
    )
    return np.array([xy[0], xy[1], INTRUDER_HALF_SIZE[2]])


def _intruder_id(sim: PickCubeSim) -> int:
    import mujoco

    body = mujoco.mj_name2id(sim.env.model, mujoco.mjtObj.mjOBJ_BODY, INTRUDER)
    if body < 0:
        raise UsageError(
            "this simulator has no intruder object: build it with make_sim(config, disturbance) "
            "(scene from intruder_scene_file)"
        )
    return int(sim.env.model.body_mocapid[body])


def intruder_pos(sim: PickCubeSim) -> np.ndarray:
    return np.asarray(sim.env.data.mocap_pos[_intruder_id(sim)], dtype=np.float64).copy()


def show_intruder(sim: PickCubeSim, pos: np.ndarray) -> None:
    import mujoco

    sim.env.data.mocap_pos[_intruder_id(sim)] = pos
    mujoco.mj_forward(sim.env.model, sim.env.data)


def hide_intruder(sim: PickCubeSim) -> None:
    show_intruder(sim, np.asarray(HIDDEN_POS))


# ------------------------------------------------------------------------------------------ scenes
def intruder_scene_xml() -> str:
    """The clean scene plus the box, as a mocap body waiting out of view."""
    root = ET.fromstring(scene_xml("none"))
    world = find(root, "worldbody")
    body = ET.SubElement(world, "body", name=INTRUDER, mocap="true", pos=" ".join(map(str, HIDDEN_POS)))
    ET.SubElement(
        body, "geom", name=INTRUDER, type="box", size=" ".join(map(str, INTRUDER_HALF_SIZE)), rgba=".95 .55 .1 1"
    )
    return ET.tostring(root, encoding="unicode")


def intruder_scene_file(cache_dir: str | Path | None = None) -> Path:
    """Write ``intruder_scene_xml`` beside links to the robot model and meshes (as ``scene.scene_file``)."""
    return write_scene(intruder_scene_xml(), "intruder", cache_dir)


def make_sim(config: SimConfig | None = None, disturbance: Disturbance | None = None) -> PickCubeSim:
    """The simulator a disturbance needs: the intruder scene for "appear", else ``config``'s scene."""
    config = config or SimConfig()
    if disturbance is not None and disturbance.needs_intruder:
        if config.perturbation != "none":
            raise ConfigError(
                f"disturbance {disturbance.kind!r} runs in the clean scene, not in perturbation {config.perturbation!r}"
            )
        from .env import import_sim_package

        import_sim_package()  # scene_xml reads the package's files
        return PickCubeSim(config, scene_path=intruder_scene_file())
    return PickCubeSim(config)


__all__ = [
    "DEFAULT_STEPS",
    "DISTURBANCES",
    "Disturbance",
    "Disturber",
    "KINDS",
    "cube_held",
    "intruder_pos",
    "intruder_scene_file",
    "make_sim",
    "move_cube",
]
