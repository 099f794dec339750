"""Where each token of the ACT encoder sequence comes from, derived from the model and input sizes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CameraTokens:
    """The token block of one camera: ``start`` in the sequence and its feature-map shape."""

    name: str
    start: int
    height: int
    width: int

    @property
    def stop(self) -> int:
        return self.start + self.height * self.width


@dataclass(frozen=True)
class TokenLayout:
    """Token layout ``[latent, (state), (env_state), camera tokens...]`` of one forward pass.

    Args:
        latent_index: index of the latent (style variable) token, always 0 in ACT.
        state_index: index of the robot state token or None when the policy has no state input.
        env_state_index: index of the environment state token or None.
        cameras: one block per camera, in the policy's image feature order.
    """

    latent_index: int
    state_index: int | None
    env_state_index: int | None
    cameras: tuple[CameraTokens, ...]

    @property
    def num_tokens(self) -> int:
        return (
            self.cameras[-1].stop
            if self.cameras
            else 1 + (self.state_index is not None) + (self.env_state_index is not None)
        )

    def camera(self, name: str) -> CameraTokens:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(f"No camera {name!r} in the token layout; cameras are {[c.name for c in self.cameras]}")

    @classmethod
    def build(
        cls, has_state: bool, has_env_state: bool, camera_names: list[str], feature_shapes: list[tuple[int, int]]
    ) -> TokenLayout:
        index = 1
        state_index = env_index = None
        if has_state:
            state_index, index = index, index + 1
        if has_env_state:
            env_index, index = index, index + 1
        cams = []
        for name, (h, w) in zip(camera_names, feature_shapes, strict=True):
            cams.append(CameraTokens(name, index, h, w))
            index += h * w
        return cls(0, state_index, env_index, tuple(cams))
