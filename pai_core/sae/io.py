"""SAE directories: ``model.safetensors`` + ``config.json`` (+ ``metrics.json``, ``README.md``)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..errors import ModelError
from .model import SAEConfig, SparseAutoencoder


def save_sae(sae: SparseAutoencoder, out_dir: str | Path, metrics: dict | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(sae.config.to_dict(), indent=2))
    if metrics is not None:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return out


def load_sae(path: str | Path, device: str = "cpu") -> SparseAutoencoder:
    """Load an SAE directory or a hub id (its whole snapshot, ``hub.locate_sae``)."""
    from ..hub import locate_sae

    path = locate_sae(path).path
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise ModelError(f"SAE directory {path} needs config.json and model.safetensors")
    try:
        config = SAEConfig.from_dict(json.loads(cfg_file.read_text()))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"Could not read SAE config {cfg_file}: {exc}") from exc
    sae = SparseAutoencoder(config)
    try:
        sae.load_state_dict(load_file(str(weights)))
    except Exception as exc:  # a truncated or foreign file: safetensors and torch raise several types
        raise ModelError(
            f"SAE weights {weights} are damaged or do not match {cfg_file} ({type(exc).__name__}: {exc})"
        ) from exc
    return sae.to(device).eval()
