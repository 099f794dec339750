"""An SAE folder on the Hugging Face Hub as one unit: what is uploaded is exactly what loading needs.

The unit (``sae_unit``) is the weights, config, metrics, model card and feature labels, plus the OOD
parameters with their calibration plot and every reference file they name. An upload replaces the repo's
files by the unit, so a stale ``ood_params.json`` from an earlier calibration never sits beside new
weights. Loading by hub id (``locate_sae``) downloads the whole snapshot and every part is read from it,
so a hub SAE runs with the alarm and labels its folder had.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from .errors import ModelError

log = logging.getLogger(__name__)

WEIGHTS, CONFIG, OOD_PARAMS = "model.safetensors", "config.json", "ood_params.json"
DESCRIPTIVE = ("metrics.json", "README.md", "labels.json")  # part of the unit when present
OOD_PLOT = "ood_calibration.png"


class SaeLocation(NamedTuple):
    """Where an SAE's files are: a local folder, and the hub repo it was downloaded from (None if local)."""

    path: Path
    repo_id: str | None = None


def locate_sae(ref: str | Path) -> SaeLocation:
    """A local SAE folder as it is; anything else is a hub id whose whole snapshot is downloaded (or, with
    ``HF_HUB_OFFLINE=1``, found in the hub cache)."""
    from .policy import looks_like_path

    text = str(ref)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"SAE {path} is a file; give the SAE folder (model.safetensors, config.json, ...)")
        return SaeLocation(path)
    if looks_like_path(text) or text.count("/") != 1:
        raise ModelError(f"SAE {text!r}: no such directory (a hub id has the form 'user/name')")
    from huggingface_hub import constants, snapshot_download

    try:
        snapshot = Path(snapshot_download(repo_id=text, repo_type="model"))
    except Exception as exc:  # offline cache miss, unknown repo, auth, network: name the id and keep the cause
        offline = " (HF_HUB_OFFLINE is set: only the hub cache was searched)" if constants.HF_HUB_OFFLINE else ""
        raise ModelError(
            f"SAE {text!r} is neither a local directory nor a hub repo that could be downloaded{offline}: {exc}"
        ) from exc
    log.info("SAE %s: hub snapshot %s", text, snapshot)
    return SaeLocation(snapshot, text)


def ood_files(folder: str | Path) -> list[str]:
    """``ood_params.json``, its plot and every file it names (the reference of its score and of each
    signal), relative to ``folder``; [] when the SAE is not calibrated. A named file that is missing, or
    one outside the folder, is an error: the OOD parameters would not work once copied elsewhere."""
    folder = Path(folder)
    params = folder / OOD_PARAMS
    if not params.is_file():
        return []
    try:
        data = json.loads(params.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"Could not read OOD parameters {params}: {exc}") from exc
    named = [data.get("reference", "")] + [s.get("reference", "") for s in data.get("signals", [])]
    files = [OOD_PARAMS] + ([OOD_PLOT] if (folder / OOD_PLOT).is_file() else [])
    for name in dict.fromkeys(n for n in named if n):
        rel = PurePosixPath(Path(name).as_posix())
        if rel.is_absolute() or ".." in rel.parts:
            raise ModelError(
                f"{params} names the reference {name!r} outside its folder; recalibrate into the "
                "SAE folder so the reference travels with it"
            )
        if not (folder / rel).is_file():
            raise ModelError(
                f"{params} names the reference {name!r}, which is missing from {folder}; "
                "recalibrate (pai calibrate-ood) or copy the file back"
            )
        files.append(str(rel))
    return files


def sae_unit(folder: str | Path) -> list[str]:
    """The files that make the SAE at ``folder`` complete, relative to it: what an upload sends and what
    a copy needs. Checkpoints and recorded activations stay local."""
    folder = Path(folder)
    for name in (WEIGHTS, CONFIG):
        if not (folder / name).is_file():
            raise ModelError(f"{folder} has no {name}: it is not an SAE folder from `pai train-sae`")
    return [WEIGHTS, CONFIG] + [n for n in DESCRIPTIVE if (folder / n).is_file()] + ood_files(folder)


def upload_arguments(folder: str | Path) -> dict:
    """Keyword arguments of ``HfApi.upload_folder`` for the SAE at ``folder``: only the unit is sent and
    every other file in the repo is deleted in the same commit (``.gitattributes`` is always kept)."""
    return {"folder_path": str(folder), "allow_patterns": sae_unit(folder), "delete_patterns": "*"}


def upload_sae(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload SAE (pai)",
) -> str:
    """Create (or reuse) the model repo ``repo_id`` and make its files the SAE's unit; returns the repo URL."""
    from huggingface_hub import HfApi

    kwargs = upload_arguments(folder)
    try:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="model", commit_message=commit_message, **kwargs)
    except Exception as exc:  # network, auth, permissions: name the repo and keep the cause
        raise ModelError(f"Could not upload {folder} to hub repo {repo_id!r}: {exc}") from exc
    return str(url)


def copy_sae(src: str | Path, dst: str | Path, with_ood: bool = True) -> Path:
    """Copy the unit of the SAE at ``src`` into ``dst`` (files, not the hub cache's links), without the OOD
    files when ``with_ood`` is off (a calibration about to replace them)."""
    import shutil

    src, dst = Path(src), Path(dst)
    skip = set() if with_ood else set(ood_files(src))
    dst.mkdir(parents=True, exist_ok=True)
    for name in sae_unit(src):
        if name not in skip:
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, dst / name)
    return dst
