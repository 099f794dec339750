"""Sharing an SAE directory on the Hugging Face Hub (as the seed's ``--upload-to-hub``)."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelError

UPLOADED = ("model.safetensors", "config.json", "metrics.json", "README.md", "ood_params.json",
            "ood_calibration.png", "labels.json")


def upload_sae(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create (or reuse) the model repo ``repo_id`` and upload the SAE's files; returns the repo URL.
    Checkpoints stay local."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        raise ModelError(f"{folder} has no model.safetensors: train the SAE before uploading it")
    try:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          allow_patterns=[p for p in UPLOADED if (folder / p).is_file()],
                          commit_message="Upload SAE trained with pai train-sae")
    except Exception as exc:  # network, auth, permissions: name the repo and keep the cause
        raise ModelError(f"Could not upload {folder} to hub repo {repo_id!r}: {exc}") from exc
    return str(url)
