"""Camera nuisance a policy tolerates and an OOD alarm must too: codec (JPEG, what a ``CompressedImage``
transport or a video-encoded dataset delivers), exposure steps, sensor noise, slight blur.

One module for all of pai: the ``patch_knn`` reference is augmented with it (so nuisance finds clean
twins and does not look novel), and the tests and benchmarks apply it to clean episodes to count false
stops.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .observation import Observation


@dataclass(frozen=True)
class Nuisance:
    """One camera condition.

    Args:
        jpeg_quality: re-encode as JPEG at this quality (1-100), None: no codec.
        gain: exposure multiplier (1.05: 5 % brighter), applied before the codec, as in a camera.
        noise_sigma: Gaussian sensor noise (grey levels).
        blur_sigma: Gaussian blur (pixels), 0: none.
    """

    jpeg_quality: int | None = None
    gain: float = 1.0
    noise_sigma: float = 0.0
    blur_sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality={self.jpeg_quality} must be within 1-100")
        if not self.gain > 0 or self.noise_sigma < 0 or self.blur_sigma < 0:
            raise ValueError(
                f"gain={self.gain} must be > 0, noise_sigma={self.noise_sigma} and blur_sigma={self.blur_sigma} >= 0"
            )

    def apply(self, rgb: np.ndarray, seed: int = 0) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> the same scene under this condition (deterministic in ``seed``)."""
        import cv2

        img: np.ndarray = rgb.astype(np.float32)
        if self.blur_sigma > 0:
            img = cv2.GaussianBlur(img, (0, 0), self.blur_sigma)
        if self.gain != 1.0:
            img = img * self.gain
        if self.noise_sigma > 0:
            img = img + np.random.default_rng(seed).normal(0.0, self.noise_sigma, img.shape).astype(np.float32)
        out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        if self.jpeg_quality is not None:
            ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(self.jpeg_quality)])
            decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            if not ok or decoded is None:
                raise RuntimeError(f"OpenCV could not round-trip a JPEG at quality {self.jpeg_quality}")
            out = np.ascontiguousarray(decoded[..., ::-1])
        return out

    def observe(self, obs: Observation, seed: int = 0) -> Observation:
        """``obs`` with every camera image under this condition."""
        return replace(
            obs, images={k: self.apply(np.asarray(v), seed + i) for i, (k, v) in enumerate(obs.images.items())}
        )


@dataclass(frozen=True)
class NuisanceRange:
    """The conditions ``sample`` draws from: each component independently, uniform within its range
    (JPEG with probability ``jpeg_probability``). Defaults: what an ordinary camera setup varies by
    (MJPEG/JPEG transports at quality 50-95, auto-exposure steps up to +-15 %, a few grey levels of noise,
    slight defocus)."""

    jpeg_quality: tuple[int, int] = (50, 95)
    jpeg_probability: float = 0.7
    gain: tuple[float, float] = (0.85, 1.15)
    noise_sigma: tuple[float, float] = (0.0, 4.0)
    blur_sigma: tuple[float, float] = (0.0, 0.8)

    def sample(self, rng: np.random.Generator, gain: float | None = None) -> Nuisance:
        q = (
            int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))
            if rng.random() < self.jpeg_probability
            else None
        )
        return Nuisance(
            q,
            float(rng.uniform(*self.gain)) if gain is None else gain,
            float(rng.uniform(*self.noise_sigma)),
            float(rng.uniform(*self.blur_sigma)),
        )

    def variants(self, n: int, rng: np.random.Generator) -> list[Nuisance]:
        """``n`` conditions whose exposures span the range evenly, both ends included (a random one for
        ``n = 1``), so every tolerated exposure step finds a twin nearby: measured on the synthetic test
        world, random or stratified exposures left the +-15 % ends alarming in 3 of 3 episodes; the other
        components are random."""
        lo, hi = self.gain
        gains = np.linspace(lo, hi, n) if n >= 2 else [rng.uniform(lo, hi)]
        return [self.sample(rng, float(g)) for g in gains]


__all__ = ["Nuisance", "NuisanceRange"]
