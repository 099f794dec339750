"""``pai calibrate-ood``: conformal OOD threshold from held-out in-distribution episodes."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate-ood", help="set the OOD threshold for a target false-alarm rate",
                       description="Score held-out in-distribution episodes through the pipeline and set the "
                                   "threshold as the split-conformal quantile for false-alarm rate ALPHA per frame. "
                                   "Writes ood_params.json and ood_calibration.png into the SAE directory.")
    p.add_argument("--sae-path", required=True, help="SAE directory from `pai train-sae`")
    p.add_argument("--policy-path", required=True, help="LeRobot pretrained_model directory or hub id")
    p.add_argument("--dataset-repo-id", required=True, help="LeRobot dataset repo id")
    p.add_argument("--root", default=None, help="local copy of the dataset")
    p.add_argument("--episodes", type=int, nargs="*", default=None,
                   help="held-out episodes (default: the SAE's held-out episodes when this is its training "
                        "dataset, else all)")
    p.add_argument("--alpha", type=float, default=0.01, help="target false-alarm rate per frame")
    p.add_argument("--score", choices=["sae_recon_mse", "sae_recon_z", "token_knn", "patch_knn"],
                   default="sae_recon_mse",
                   help="sae_recon_mse: mean token reconstruction error; sae_recon_z: per-position "
                        "standardised token error (fitted on a quarter of the episodes, the threshold on the rest); "
                        "token_knn: distance of the encoder-input tokens to the nearest clean reference frames; "
                        "patch_knn: distance of the backbone's image patches to those of the clean reference "
                        "frames nearest in joint state (the most sensitive; docs/trainer.md)")
    p.add_argument("--reference-root", default=None,
                   help="token_knn/patch_knn: clean reference dataset (default: the SAE's training dataset)")
    p.add_argument("--reference-episodes", type=int, nargs="*", default=None,
                   help="token_knn/patch_knn: reference episodes (default: the SAE's training episodes)")
    p.add_argument("--knn-k", type=int, default=None,
                   help="token_knn: neighbours averaged (default 5); patch_knn: reference frames compared (default 32)")
    p.add_argument("--reference-stride", type=int, default=1,
                   help="token_knn/patch_knn: keep every N-th reference frame (smaller file, faster scoring)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per forward")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--output", default=None, help="ood_params.json path (default: SAE_PATH/ood_params.json)")
    return p


def default_episodes(sae_extra: dict, dataset) -> list[int] | None:
    """The SAE's held-out episodes when ``dataset`` is the one it was trained on (calibrating on training
    frames would set the threshold too low)."""
    same_root = sae_extra.get("dataset_root") and Path(sae_extra["dataset_root"]).resolve() == Path(dataset.root).resolve()
    if same_root and sae_extra.get("held_out_episodes"):
        return list(sae_extra["held_out_episodes"])
    return None


def reference_batches(pipe, args):
    """Clean reference frames through the engine, a batch at a time: (episode, observations, results).
    Default: the SAE's training episodes, so the calibration episodes stay unseen and the conformal
    threshold stays valid."""
    from tqdm.auto import tqdm

    from ..errors import InputError
    from ..sources.dataset import iter_episode, open_dataset, select_episodes

    sae_extra = pipe.extractor.sae.config.extra
    root = args.reference_root or sae_extra.get("dataset_root")
    if not root:
        raise InputError(f"--score {args.score} needs --reference-root (the SAE does not record its training dataset)")
    if args.reference_stride < 1:
        raise InputError(f"--reference-stride {args.reference_stride} must be at least 1")
    ref = open_dataset(sae_extra.get("dataset") or args.dataset_repo_id, root)
    episodes = args.reference_episodes
    if not episodes and not args.reference_root:  # the SAE's training episodes, never its held-out ones
        held = set(sae_extra.get("held_out_episodes") or [])
        episodes = sae_extra.get("train_episodes") or [e for e in range(ref.meta.total_episodes) if e not in held]
    for ep in tqdm(select_episodes(ref, episodes), desc="reference frames", unit="ep"):
        obs = list(iter_episode(ref, ep))[:: args.reference_stride]
        for i in range(0, len(obs), args.batch_size):
            yield ep, obs[i:i + args.batch_size], pipe.engine.step_batch(obs[i:i + args.batch_size])


def fit_reference(pipe, args):
    """The ``token_knn`` or ``patch_knn`` scorer, fitted on the clean reference frames."""
    import numpy as np
    import torch

    from ..errors import InputError
    from ..ood import KnnScorer
    from ..ood_patch import PatchKnnConfig, PatchKnnScorer, patch_grid
    from ..pipeline import vision_batch

    if args.score == "token_knn":
        tokens = [r.input_tokens.float().cpu().numpy() for _, _, results in reference_batches(pipe, args) for r in results]
        return KnnScorer.fit(np.stack(tokens), k=args.knn_k or 5)
    cfg = PatchKnnConfig(k_frames=args.knn_k or 32)
    pipe.engine.adapter.keep_vision_features = True
    grids, states, ep_ids = [], [], []
    for ep, batch, results in reference_batches(pipe, args):
        maps, s = vision_batch(results, batch)
        grids.append({cam: patch_grid([m.cpu() for m in levels], cfg.max_grid) for cam, levels in maps.items()})
        states.append(s if s is not None else np.zeros((len(batch), 0), np.float32))
        ep_ids += [ep] * len(batch)
    try:
        return PatchKnnScorer.fit({cam: torch.cat([g[cam] for g in grids]) for cam in grids[0]},
                                  np.concatenate(states), np.asarray(ep_ids), cfg)
    except ValueError as exc:
        raise InputError(f"patch_knn reference frames: {exc}") from exc


def split_for_standardizer(eps):
    """A quarter of the episodes (at least one) fit the per-position standardiser, the others set the
    threshold, so the conformal quantile is taken on frames the standardiser never saw. A single episode
    is split by time instead."""
    import numpy as np

    from ..ood import EpisodeScores

    if len(eps) >= 2:
        n_fit = max(1, len(eps) // 4)
        return np.concatenate([e.token_error for e in eps[:n_fit]]), eps[n_fit:]
    e = eps[0]
    cut = max(1, e.token_error.shape[0] // 4)
    rest = EpisodeScores(e.dataset, e.episode, e.scores[cut:], e.timestamps[cut:], e.alarm[cut:], e.token_error[cut:])
    return e.token_error[:cut], [rest]


def plot_calibration(scores, threshold: float, alpha: float, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(scores, bins=50, color="#4c72b0", alpha=0.85, label=f"calibration frames (n={len(scores)})")
    ax.axvline(threshold, color="#c44e52", lw=2, label=f"threshold {threshold:.4g} (alpha={alpha:g})")
    ax.set_xlabel("OOD score")
    ax.set_ylabel("frames")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(args) -> int:
    import numpy as np

    from ..errors import InputError
    from ..ood import OODParams, calibrate, fit_token_standardizer, frame_scores, score_episodes
    from ..pipeline import Pipeline
    from ..sources.dataset import open_dataset

    if not 0.0 < args.alpha < 1.0:
        raise InputError(f"--alpha {args.alpha} must be within (0, 1)")
    dataset = open_dataset(args.dataset_repo_id, args.root)
    pipe = Pipeline.load(args.policy_path, args.sae_path, device=args.device)
    episodes = args.episodes
    if not episodes:
        episodes = default_episodes(pipe.extractor.sae.config.extra, dataset)
        if episodes:
            log.info("calibrating on the SAE's held-out episodes %s", episodes)
    pipe.ood = None  # calibrate from raw token errors, whatever ood_params.json the SAE folder holds
    out = Path(args.output) if args.output else Path(args.sae_path) / "ood_params.json"
    extra: dict = {}
    if args.score in ("token_knn", "patch_knn"):
        extra = {"score": args.score, "reference": "ood_reference.safetensors"}
        if args.score == "token_knn":
            extra["knn_k"] = args.knn_k or 5
        fit_reference(pipe, args).save(out.with_name(extra["reference"]))
        pipe.ood = OODParams(threshold=float("inf"), **extra, source_dir=str(out.parent))
    eps = score_episodes(pipe, dataset, episodes, args.batch_size)
    threshold_eps = eps
    if args.score == "sae_recon_z":
        fit_errors, threshold_eps = split_for_standardizer(eps)
        mean, std = fit_token_standardizer(fit_errors)
        extra = {"score": "sae_recon_z", "token_mean": mean, "token_std": std}
        probe = OODParams(threshold=0.0, **extra)
        scores = np.concatenate([frame_scores(e.token_error, probe) for e in threshold_eps])
    else:
        scores = np.concatenate([e.scores for e in threshold_eps])
    try:
        params = calibrate(scores, args.alpha)
    except ValueError as exc:
        raise InputError(f"Calibration on {scores.size} frames failed: {exc}") from exc
    for key, value in extra.items():
        setattr(params, key, value)
    params.dataset = str(args.root or args.dataset_repo_id)
    params.episodes = [e.episode for e in threshold_eps]
    params.save(out)
    png = plot_calibration(scores, params.threshold, args.alpha, out.with_name("ood_calibration.png"),
                           f"{args.dataset_repo_id}: {len(eps)} episodes")
    print(json.dumps({"ood_params": str(out), "plot": str(png), "threshold": params.threshold,
                      "alpha": params.alpha, "frames": params.n_calibration,
                      "empirical_rate_on_calibration": float(np.mean(scores > params.threshold))}, indent=2))
    return 0
