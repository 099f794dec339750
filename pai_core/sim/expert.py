"""A scripted expert for pick-cube: hover above the cube, descend, close the jaws, lift.

It reads the true cube position from the simulator (privileged state the policy never gets) and
carries its phase from step to step, because closing the jaws takes several steps in which nothing
observable changes.
"""

from __future__ import annotations

import enum

import numpy as np

HOVER_HEIGHT = 0.07  # grasp point above the cube centre while aligning
GRASP_HEIGHT = 0.012  # grasp point above the cube centre when closing
LIFT_HEIGHT = 0.14  # cube rise the expert aims for (success needs 0.10)
GOAL_TOLERANCE = 0.005
CAREFUL_SPEED = 0.4  # action magnitude near the cube
CLOSE_STEPS = 8
PHASE_TIMEOUT = 40
GRIPPER_OPEN, GRIPPER_CLOSED = 1.0, 0.0


class Phase(enum.Enum):
    HOVER = 0
    DESCEND = 1
    CLOSE = 2
    LIFT = 3


class PickExpert:
    """Call ``reset()`` per episode and ``act(grasp_point, cube_position)`` per step."""

    def __init__(self, action_scale: float = 0.025):
        self.action_scale = action_scale
        self.reset()

    def reset(self) -> None:
        self.phase = Phase.HOVER
        self.steps_in_phase = 0
        self.table_z: float | None = None

    def _target(self, grasp: np.ndarray, cube: np.ndarray, table_z: float) -> np.ndarray:
        if self.phase is Phase.HOVER:
            return np.array([cube[0], cube[1], table_z + HOVER_HEIGHT])
        if self.phase is Phase.DESCEND:
            return np.array([cube[0], cube[1], table_z + GRASP_HEIGHT])
        return np.array([grasp[0], grasp[1], table_z + GRASP_HEIGHT + LIFT_HEIGHT])

    def act(self, grasp_point: np.ndarray, cube: np.ndarray) -> np.ndarray:
        """(4,) float32 ``[dx, dy, dz, grasp]`` for the current phase (advancing it when its goal is met)."""
        grasp_point = np.asarray(grasp_point, dtype=np.float64)
        cube = np.asarray(cube, dtype=np.float64)
        if self.table_z is None:
            self.table_z = float(cube[2])
        while True:
            if self.phase is Phase.CLOSE:
                delta = np.zeros(3)
                done = self.steps_in_phase >= CLOSE_STEPS
            else:
                error = self._target(grasp_point, cube, self.table_z) - grasp_point
                limit = 1.0 if self.phase is Phase.HOVER else CAREFUL_SPEED
                delta = np.clip(error / self.action_scale, -limit, limit)
                done = self.phase is not Phase.LIFT and bool(
                    np.linalg.norm(error) < GOAL_TOLERANCE or self.steps_in_phase >= PHASE_TIMEOUT
                )
            if not done:
                break
            self.phase = Phase(self.phase.value + 1)
            self.steps_in_phase = 0
        self.steps_in_phase += 1
        grip = GRIPPER_OPEN if self.phase in (Phase.HOVER, Phase.DESCEND) else GRIPPER_CLOSED
        return np.asarray([*delta, grip], dtype=np.float32)
