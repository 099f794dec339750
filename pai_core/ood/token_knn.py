"""``token_knn``: a frame's standardised encoder-input tokens against clean reference frames."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..errors import ModelError
from .params import OODParams
from .registry import register
from .scorer import FitJob, Fitted, ScoreBatch, ScoreOutput

if TYPE_CHECKING:
    import torch

REFERENCE_FILE = "ood_reference.safetensors"


@register
class KnnScorer:
    """``token_knn``: a frame's standardised encoder-input tokens (S*D values) against clean reference
    frames; the score is the mean squared distance to the ``k`` nearest, per value. The encoder input
    still carries what the encoder's LayerNorms remove (brightness, small local changes): on the SO-101
    demo policy it separated lighting, distractor, cube size and occlusion with AUROC 0.93-0.998 where
    the SAE reconstruction error reached 0.41-0.77 (docs/demo.md)."""

    name: ClassVar[str] = "token_knn"
    description: ClassVar[str] = (
        "mean distance of the frame's encoder-input tokens to its k nearest clean reference frames"
    )
    needs_vision_features: ClassVar[bool] = False

    def __init__(self, reference: np.ndarray, mean: np.ndarray, std: np.ndarray, k: int = 5):
        import torch

        self.reference = torch.as_tensor(reference, dtype=torch.float32)
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(std, dtype=torch.float32)
        self.k = min(k, self.reference.shape[0])

    @classmethod
    def fit(cls, job: FitJob) -> Fitted:
        """The encoder-input tokens of every ``stride``-th frame of the reference episodes (default the
        SAE's training episodes, so the calibration episodes stay unseen)."""
        from .reference import fit_token_reference

        if job.reference is None:
            raise ValueError("token_knn is fitted on reference episodes; the fit job names none")
        ref, episodes = job.reference
        o = job.options
        scorer = fit_token_reference(job.pipe, ref, episodes, o.get("knn_k") or 5, o.get("stride", 1), job.batch_size)
        return Fitted(scorer, list(job.episodes))

    @classmethod
    def from_tokens(cls, tokens: np.ndarray, k: int = 5) -> KnnScorer:
        """tokens: (N, S, D) encoder-input tokens of clean reference frames."""
        flat = tokens.reshape(len(tokens), -1).astype(np.float32)
        mean, std = flat.mean(0), flat.std(0) + 1e-6
        return cls((flat - mean) / std, mean, std, k)

    @classmethod
    def load(cls, params: OODParams) -> KnnScorer:
        from safetensors.numpy import load_file

        path = params.reference_path
        try:
            data = load_file(str(path))
        except Exception as exc:
            raise ModelError(f"Could not load the token_knn reference {path}: {exc}") from exc
        return cls(data["reference"], data["mean"], data["std"], params.knn_k)

    def save(self, folder: Path) -> dict:
        from safetensors.numpy import save_file

        save_file(
            {"reference": self.reference.numpy(), "mean": self.mean.numpy(), "std": self.std.numpy()},
            str(Path(folder) / REFERENCE_FILE),
        )
        return {"reference": REFERENCE_FILE, "knn_k": self.k}

    def score(self, batch: ScoreBatch) -> ScoreOutput:
        import torch

        tokens = [r.input_tokens for r in batch.results if r.input_tokens is not None]
        if len(tokens) != len(batch.results):
            raise ModelError("token_knn scores the encoder-input tokens, but the adapter captured none")
        scores = self(torch.stack(tokens))
        from ..features import error_maps

        return ScoreOutput(scores, error_maps(batch.token_error, batch.results[0].layout))

    def leaving_out(self, episode: int | None) -> AbstractContextManager[KnnScorer]:
        return nullcontext(self)

    def reset(self) -> None:
        pass

    def describe(self) -> dict:
        return {"frames": int(self.reference.shape[0]), "size_mb": round(self.reference.numel() * 4 / 1e6, 1)}

    def map_scale(self, threshold: float) -> None:
        """Its score does not come from the (reconstruction error) maps: per-frame normalisation."""
        return None

    def __call__(self, input_tokens: torch.Tensor | np.ndarray) -> np.ndarray:
        """(B, S, D) encoder-input tokens (torch or numpy) -> (B,) scores."""
        import torch

        x = torch.as_tensor(input_tokens).detach().float().cpu().reshape(len(input_tokens), -1)
        if x.shape[1] != self.reference.shape[1]:
            raise ModelError(
                f"token_knn reference frames have {self.reference.shape[1]} values but the policy "
                f"produced {x.shape[1]}; recalibrate with `pai calibrate-ood --score token_knn`"
            )
        q = (x - self.mean) / self.std
        d = torch.cdist(q, self.reference).pow(2) / q.shape[1]
        return d.topk(self.k, dim=1, largest=False).values.mean(1).numpy().astype(np.float64)
