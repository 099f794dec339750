#!/usr/bin/env python
"""OOD detection per perturbation type: pai's detector against the seed's rule, on the same frames.

pai: per-token TopK SAE reconstruction error, split-conformal threshold from held-out clean episodes
(``ood_params.json``), n-of-m alarm. Seed: one whole-frame SAE (all S*D token values -> S*D ReLU
features, MSE + L1) trained on the SAE's clean training frames, reconstruction error, threshold mean +
2.5 sigma of its training scores, the same alarm policy. Every frame goes through ``Pipeline`` once; the
baseline scores the encoder tokens of that same forward.

Printed per perturbation: frame AUROC (clean held-out vs perturbed frames), TPR at each threshold,
detection delay (frames from the episode start to the alarm) and episodes detected; on clean held-out
episodes: the frame false-alarm rate and the share of episodes whose alarm rose, against alpha.
Targets: AUROC >= 0.95 per type, clean frame false alarms <= alpha.

Sides and ratios: both detectors score the very same frames (the seed's rule reads the encoder tokens of the
Pipeline's forward of each frame), so the sides are paired frame by frame, not timed apart. This is a
detection benchmark, so no timing ratio: pai and the seed are printed side by side per perturbation. A ratio
of AUROCs would hide that 0.5 is chance; the inference cost against plain LeRobot is bench/overhead.py's.

Where the inputs come from (each piece separately):
  --policy-path + --sae-path given together; else DEMO_DIR/policy/pretrained_model, else trained in
                             WORK_DIR; and DEMO_DIR/sae (with ood_params.json), else trained and
                             calibrated in WORK_DIR for that policy (demo's datasets when present)
  --clean ROOT ...           given; else DEMO_DIR/datasets/test_clean, topped up to --clean-episodes
                             with episodes recorded in WORK_DIR
  --ood NAME=ROOT ...        given; else DEMO_DIR/datasets/ood_NAME; else recorded in WORK_DIR
Recorded and trained pieces are cached: a second run reuses them.

    python bench/ood.py --quick                          # reuse outputs/demo, build what is missing
    python bench/ood.py --demo-dir /tmp/demo --quick --threads 1
    python bench/ood.py --policy-path P --sae-path S --clean data/clean --ood lighting=data/ood_lighting
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pai_core.commands import args as flags  # noqa: E402
from pai_core.errors import InputError, PaiError  # noqa: E402

AUROC_TARGET = 0.95


# ------------------------------------------------------------------------------------------ setup
@dataclass
class Setup:
    """Everything the benchmark reads, and where each piece came from."""

    policy: Path
    sae: Path
    ood_params: Path
    clean: list[Path]
    perturbed: dict[str, Path]
    origin: dict[str, str] = field(default_factory=dict)


def n_episodes(root: Path) -> int:
    info = root / "meta" / "info.json"
    return int(json.loads(info.read_text())["total_episodes"]) if info.is_file() else 0


def _parse_ood(specs: list[str]) -> dict[str, Path]:
    out = {}
    for spec in specs:
        name, sep, root = spec.partition("=")
        if not sep:  # a bare root: the perturbation recorded in its pai_sim.json, else the folder name
            root, meta = spec, Path(spec) / "pai_sim.json"
            name = json.loads(meta.read_text()).get("perturbation", "") if meta.is_file() else ""
            name = name or Path(spec).name.removeprefix("ood_")
        if not Path(root).is_dir():
            raise InputError(f"--ood {spec!r}: {root} is not a dataset directory (expected NAME=ROOT)")
        out[name] = Path(root)
    return out


def resolve_setup(args) -> Setup:
    from pai_core.ood.calibration import CalibrationJob, calibrate_ood
    from pai_core.sim.demo import REPO_ID, DemoConfig, build_stages, record_episodes, train_demo_policy, train_demo_sae
    from pai_core.sim.scene import PERTURBATIONS

    demo, work = Path(args.demo_dir), Path(args.work_dir)
    cfg = DemoConfig.preset(work, quick=args.quick)
    cfg.calibration = "expert"  # what this bench calibrates when it builds the SAE: held-out expert episodes
    cfg.perturbations = list(args.perturbations)
    cfg.test_episodes, cfg.ood_episodes = args.clean_episodes, args.ood_episodes
    if args.train_minutes is not None:
        cfg.train_minutes = args.train_minutes
    stages = {s.name: s for s in build_stages(cfg)}
    origin: dict[str, str] = {}

    def ensure(name: str) -> None:
        stage = stages[name]
        if all(p.exists() for p in stage.outputs):
            print(f"[bench] {name}: cached in {work}", flush=True)
            return
        print(f"[bench] {name}: {stage.what}", flush=True)
        stage.run()

    for p in cfg.perturbations:
        if p not in PERTURBATIONS or p == "none":
            known = [k for k in PERTURBATIONS if k != "none"]
            raise InputError(f"--perturbations: unknown {p!r}; expected some of {known}")

    # policy, then SAE + calibration (each: given, the demo's, or built here)
    def dataset(name: str) -> Path:
        root = demo / "datasets" / name
        if (root / "meta/info.json").is_file():
            return root
        ensure(f"record_{name}")
        return work / "datasets" / name

    if bool(args.policy_path) != bool(args.sae_path):
        raise InputError(
            "give both --policy-path and --sae-path (an SAE of that policy, with ood_params.json), "
            "or neither to use the demo's or build them"
        )
    if args.policy_path:
        policy, origin["policy"] = Path(args.policy_path), "given"
    elif (demo / "policy/pretrained_model/model.safetensors").is_file():
        policy, origin["policy"] = demo / "policy/pretrained_model", f"demo {demo}"
    else:
        if cfg.policy == "train":  # on the demo's training episodes when it has them
            stages["train_policy"].run = lambda: train_demo_policy(cfg, dataset("train"))
        ensure("train_policy")
        policy, origin["policy"] = work / "policy/pretrained_model", f"built in {work}"
    if args.sae_path:
        sae, origin["sae"] = Path(args.sae_path), "given"
    elif policy == demo / "policy/pretrained_model" and (demo / "sae/ood_params.json").is_file():
        sae, origin["sae"] = demo / "sae", f"demo {demo}"
    else:
        sae = work / "sae"
        cfg_file = sae / "config.json"
        trained_for = json.loads(cfg_file.read_text()).get("policy") if cfg_file.is_file() else None
        if trained_for is not None and Path(trained_for).resolve() != policy.resolve():
            raise InputError(f"{sae} holds an SAE of policy {trained_for}, not {policy}: delete it or pass --work-dir")
        if not (sae / "model.safetensors").is_file():
            print("[bench] train_sae: activations + TopK SAE", flush=True)
            train_demo_sae(policy, dataset("train"), sae, cfg.sae_steps)
        if not (sae / "ood_params.json").is_file():
            print("[bench] calibrate_ood: conformal threshold on held-out clean episodes", flush=True)
            calibrate_ood(
                CalibrationJob(sae, policy, REPO_ID, dataset("calibration"), sae / "ood_params.json", alpha=args.alpha)
            )
        origin["sae"] = f"built in {work}"
    ood_params = Path(args.ood_params_path) if args.ood_params_path else sae / "ood_params.json"
    if not ood_params.is_file():
        raise InputError(
            f"No OOD parameters at {ood_params}: run `pai calibrate-ood --sae-path {sae} ...` "
            "on held-out clean episodes first"
        )

    # clean held-out episodes
    if args.clean:
        clean, origin["clean"] = [Path(c) for c in args.clean], "given"
    else:
        clean = [r for r in (demo / "datasets/test_clean",) if (r / "meta/info.json").is_file()]
        have = sum(n_episodes(r) for r in clean)
        origin["clean"] = f"demo {demo} ({have} episodes)" if clean else ""
        if have < args.clean_episodes:
            if not clean:
                ensure("record_test_clean")
                clean = [work / "datasets/test_clean"]
                origin["clean"] = f"recorded in {work}"
            else:  # top the demo's episodes up with new ones (other cube seeds than the demo's 7000+)
                extra = work / "datasets/test_clean_extra"
                if not (extra / "pai_sim.json").is_file():
                    print(f"[bench] recording {args.clean_episodes - have} more clean episodes", flush=True)
                    record_episodes(extra, args.clean_episodes - have, 8000, "none", None)
                clean.append(extra)
                origin["clean"] += f" + {n_episodes(extra)} recorded in {extra}"

    # perturbed episodes
    perturbed = _parse_ood(args.ood)
    for p in cfg.perturbations:
        if p in perturbed:
            origin[p] = "given"
        elif (demo / f"datasets/ood_{p}/meta/info.json").is_file():
            perturbed[p], origin[p] = demo / f"datasets/ood_{p}", f"demo {demo}"
        else:
            ensure(f"record_{p}")
            perturbed[p], origin[p] = work / f"datasets/ood_{p}", f"recorded in {work}"
    return Setup(policy, sae, ood_params, clean, perturbed, origin)


# ------------------------------------------------------------------------------------------ scoring
class TokenTap:
    """Stands in for the pipeline in ``score_episodes`` and keeps each frame's encoder tokens (the
    baseline's input), so both detectors see the one forward of every frame."""

    def __init__(self, pipe, dtype):
        self.pipe, self.dtype, self.tokens = pipe, dtype, []

    @property
    def extractor(self):
        return self.pipe.extractor

    def reset(self) -> None:
        self.pipe.reset()

    def step_batch(self, observations):
        frames = self.pipe.step_batch(observations)
        self.tokens += [f.result.tokens.detach().to("cpu", self.dtype).float() for f in frames]
        return frames

    def take(self):
        import torch

        out, self.tokens = torch.stack(self.tokens), []
        return out


def score_dataset(tap: TokenTap, root: Path, batch_size: int, episodes=None):
    """(pai EpisodeScores list, per-episode token tensors) of one dataset."""
    from pai_core.ood import score_episodes
    from pai_core.sources.dataset import open_dataset_spec

    eps = score_episodes(tap, open_dataset_spec(str(root), None), episodes, batch_size)
    tokens = tap.take()
    bounds = np.cumsum([0] + [e.scores.size for e in eps])
    return eps, [tokens[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def baseline_episodes(model, eps, tokens, alarm_cfg):
    """The seed's scores of the same frames, with the same alarm policy on its own threshold."""
    from pai_core.alarm import AlarmPolicy
    from pai_core.ood import EpisodeScores

    thr = float(model.threshold)
    out = []
    for e, tok in zip(eps, tokens):
        s = model.score(tok)
        policy = AlarmPolicy(alarm_cfg)
        alarm = np.array([policy.update(float(v), thr).active for v in s], bool)
        out.append(EpisodeScores(e.dataset, e.episode, s, e.timestamps, alarm))
    return out


def training_tokens(pipe, tap: TokenTap, args):
    """Tokens of the SAE's clean training frames: from its activation recording when that holds full
    frames of this layer, else through the pipeline over its training episodes."""
    import torch

    from pai_core.activations import ActivationStore, read_shard

    extra = pipe.extractor.sae.config.extra
    train_eps = set(extra.get("train_episodes") or [])
    acts = Path(extra.get("activations") or "")
    if not args.train_root and (acts / "activations.json").is_file():
        store = ActivationStore(acts)
        if store.manifest.get("sampling") == "all" and int(store.manifest["layer"]) == pipe.extractor.sae.config.layer:
            shards = [s for s in store.shards if not train_eps or store.shard_episode(s) in train_eps]
            tokens = torch.cat([read_shard(s)["tokens"].float() for s in shards])
            return tokens, f"{acts} (episodes {sorted(train_eps) or 'all'}, {store.manifest['dtype']})"
    root = args.train_root or extra.get("dataset_root")
    if not root or not Path(root).is_dir():
        raise InputError(
            "No clean training frames for the baseline: the SAE's activation recording and dataset_root "
            "are missing; pass --train-root DATASET"
        )
    episodes = sorted(train_eps) if not args.train_root and train_eps else None
    _, toks = score_dataset(tap, Path(root), args.batch_size, episodes)
    return torch.cat(toks), f"{root} (episodes {episodes or 'all'}, through the pipeline)"


# ------------------------------------------------------------------------------------------ report
def summarise(ev: dict) -> dict:
    per = ev["ood_episodes"]
    return {
        "auroc": ev["auroc"],
        "tpr_at_threshold": ev["tpr_at_threshold"],
        "mean_detection_delay_frames": ev["mean_detection_delay_frames"],
        "episodes_detected": sum(r["detected"] for r in per),
        "episodes": len(per),
        "frames": ev["frames"]["ood"],
        "auroc_target_met": ev["auroc"] >= AUROC_TARGET,
    }


def clean_summary(ev: dict, alpha: float) -> dict:
    per = ev["in_distribution_episodes"]
    fpr = ev["false_positive_rate_at_threshold"]
    return {
        "frame_false_alarm_rate": fpr,
        "episodes_with_alarm": sum(r["alarm_raised"] for r in per),
        "episodes": len(per),
        "frames": ev["frames"]["in_distribution"],
        "alpha": alpha,
        "target_met": fpr <= alpha,
    }


def print_table(result: dict) -> None:
    import json

    score = json.loads(Path(result["setup"]["ood_params"]).read_text()).get("score", "sae_recon_mse")
    names = {"pai": f"pai ({score}, conformal)", "seed": "seed (whole-frame SAE, 2.5 sigma)"}
    print(
        f"\nOOD benchmark: AUROC target >= {AUROC_TARGET}, clean frame false alarms target <= alpha "
        f"= {result['alpha']:g}; alarm {result['alarm']['n']} of {result['alarm']['m']} frames"
    )
    head = (
        f"{'perturbation':<13} {'detector':<35} {'AUROC':>6} {'target':>6} {'TPR@thr':>8} {'delay':>6} {'detected':>9}"
    )
    print(head + "\n" + "-" * len(head))
    for p, by in result["perturbations"].items():
        for i, (key, r) in enumerate(by.items()):
            delay = "-" if r["mean_detection_delay_frames"] is None else f"{r['mean_detection_delay_frames']:.1f}"
            print(
                f"{p if i == 0 else '':<13} {names[key]:<35} {r['auroc']:>6.3f} "
                f"{'ok' if r['auroc_target_met'] else 'MISS':>6} {r['tpr_at_threshold']:>8.3f} {delay:>6} "
                f"{r['episodes_detected']:>4}/{r['episodes']:<4}"
            )
    print("-" * len(head))
    for key, c in result["clean"].items():
        print(
            f"clean held-out, {names[key]}: frame false alarms {c['frame_false_alarm_rate']:.4f} "
            f"({'ok' if c['target_met'] else 'MISS'} vs alpha {c['alpha']:g}, {c['frames']} frames), "
            f"episodes with an alarm {c['episodes_with_alarm']}/{c['episodes']}"
        )
    print(
        f"thresholds: pai {result['thresholds']['pai']:.5g} (conformal), "
        f"seed {result['thresholds']['seed']:.5g} (mean + {result['baseline']['sigma']:g} sigma)"
    )
    print("delay: mean frames from the episode start to the alarm over detected episodes\n")


def plot(clean: dict, perturbed: dict, result: dict, path: Path) -> Path:
    """Score histograms per perturbation: top row pai, bottom row the seed's rule, thresholds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = list(perturbed)
    fig, axes = plt.subplots(2, len(types), figsize=(3.6 * len(types), 6.4), squeeze=False)
    for row, key in enumerate(("pai", "seed")):
        c = np.concatenate([e.scores for e in clean[key]])
        thr = result["thresholds"][key]
        for col, p in enumerate(types):
            ax = axes[row, col]
            o = np.concatenate([e.scores for e in perturbed[p][key]])
            both = np.concatenate([c, o, [thr]])
            lo, hi = max(both.min(), 1e-12), both.max()
            log = hi / lo > 50
            bins = np.geomspace(lo, hi * 1.001, 40) if log else np.linspace(both.min(), hi, 40)
            ax.hist(c, bins=bins, alpha=0.6, color="#4c72b0", label="clean")
            ax.hist(o, bins=bins, alpha=0.6, color="#dd8452", label=p)
            ax.axvline(thr, color="#c44e52", lw=1.8, label="threshold")
            if log:
                ax.set_xscale("log")
            ax.set_title(f"{key}: {p}\nAUROC {result['perturbations'][p][key]['auroc']:.3f}", fontsize=9)
            ax.tick_params(labelsize=7)
            if col == 0:
                ax.set_ylabel("frames")
                ax.legend(fontsize=7)
    axes[0, 0].annotate(
        "pai: ood_params.json score, conformal threshold", (0, 1.25), xycoords="axes fraction", fontsize=9
    )
    axes[1, 0].annotate("seed: whole-frame SAE, mean + 2.5 sigma", (0, 1.25), xycoords="axes fraction", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    from pai_core.sim.scene import PERTURBATIONS

    all_types = [p for p in PERTURBATIONS if p != "none"]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-dir", default="outputs/demo", help="demo outputs to reuse (default outputs/demo)")
    ap.add_argument("--work-dir", default=None, help="where missing pieces are built (default OUTPUT_DIR/setup)")
    ap.add_argument("--output-dir", default="outputs/ood_bench", help="ood_bench.json and ood_bench.png go here")
    ap.add_argument("--quick", action="store_true", help="small sizes: few episodes, short training (minutes)")
    ap.add_argument("--policy-path", default="", help="LeRobot pretrained_model directory")
    ap.add_argument("--sae-path", default="", help="SAE directory with ood_params.json")
    flags.add_ood_params_path(
        ap, "ood_params.json (default SAE_PATH/ood_params.json)", old=["--ood-params"], default=""
    )
    ap.add_argument("--clean", nargs="*", default=[], metavar="ROOT", help="clean held-out dataset roots")
    ap.add_argument("--ood", nargs="*", default=[], metavar="NAME=ROOT", help="perturbed dataset roots")
    ap.add_argument(
        "--train-root",
        default="",
        help="clean training dataset for the baseline (default: the SAE's activation recording or training dataset)",
    )
    ap.add_argument(
        "--perturbations",
        nargs="*",
        default=None,
        choices=all_types,
        help=f"types to evaluate (default all: {' '.join(all_types)}; with --ood only those given)",
    )
    ap.add_argument("--clean-episodes", type=int, default=None, help="clean held-out episodes (quick 3, full 8)")
    ap.add_argument(
        "--ood-episodes", type=int, default=None, help="episodes per perturbation when recorded (quick 2, full 3)"
    )
    ap.add_argument("--train-minutes", type=float, default=None, help="policy training budget when built here")
    ap.add_argument("--alpha", type=float, default=0.01, help="false-alarm rate when calibrating here")
    ap.add_argument("--alarm-n", type=int, default=3, help="frames above threshold among the last M raising the alarm")
    ap.add_argument("--alarm-m", type=int, default=5, help="alarm window in frames")
    ap.add_argument("--baseline-steps", type=int, default=None, help="whole-frame SAE steps (quick 500, full 2000)")
    ap.add_argument("--baseline-l1", type=float, default=1e-3, help="whole-frame SAE L1 coefficient")
    ap.add_argument("--baseline-features", type=int, default=0, help="whole-frame SAE features (0: S*D, the seed's)")
    ap.add_argument("--sigma", type=float, default=2.5, help="the seed's threshold: mean + SIGMA std")
    ap.add_argument("--batch-size", type=int, default=16, help="frames per forward")
    ap.add_argument("--device", default="cpu", help="torch device of the policy and SAE")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.clean_episodes = args.clean_episodes or (3 if args.quick else 8)
    args.ood_episodes = args.ood_episodes or (2 if args.quick else 3)
    args.baseline_steps = args.baseline_steps or (500 if args.quick else 2000)
    args.perturbations = args.perturbations or ([] if args.ood else all_types)
    out = Path(args.output_dir)
    args.work_dir = args.work_dir or str(out / "setup")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from bench.baselines import WholeFrameSAEConfig, train_whole_frame_sae
    from pai_core.alarm import AlarmConfig
    from pai_core.ood import evaluate_episodes
    from pai_core.pipeline import Pipeline

    try:
        start = time.perf_counter()
        setup = resolve_setup(args)
        alarm = AlarmConfig(n=args.alarm_n, m=args.alarm_m, latch=True)
        pipe = Pipeline.load(str(setup.policy), str(setup.sae), str(setup.ood_params), device=args.device, alarm=alarm)
        extra = pipe.extractor.sae.config.extra
        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(extra.get("dtype"), torch.float32)
        tap = TokenTap(pipe, dtype)  # the baseline sees tokens stored as its training tokens were

        train_tokens, train_source = training_tokens(pipe, tap, args)
        print(
            f"[bench] whole-frame SAE on {train_tokens.shape[0]} training frames of {tuple(train_tokens.shape[1:])} "
            f"tokens from {train_source}",
            flush=True,
        )
        model, base_info = train_whole_frame_sae(
            train_tokens,
            WholeFrameSAEConfig(
                n_features=args.baseline_features,
                l1_coef=args.baseline_l1,
                steps=args.baseline_steps,
                sigma=args.sigma,
                seed=args.seed,
            ),
        )
        base_info["source"] = train_source

        clean = {"pai": [], "seed": []}
        for root in setup.clean:
            eps, toks = score_dataset(tap, root, args.batch_size)
            clean["pai"] += eps
            clean["seed"] += baseline_episodes(model, eps, toks, alarm)
        perturbed = {}
        for p, root in setup.perturbed.items():
            eps, toks = score_dataset(tap, root, args.batch_size)
            perturbed[p] = {"pai": eps, "seed": baseline_episodes(model, eps, toks, alarm)}
    except (PaiError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    thresholds = {"pai": float(pipe.threshold), "seed": float(model.threshold)}
    alpha = float(pipe.ood.alpha)
    result = {
        "alpha": alpha,
        "alarm": asdict(alarm),
        "thresholds": thresholds,
        "auroc_target": AUROC_TARGET,
        "setup": {
            k: (
                str(v)
                if isinstance(v, Path)
                else [str(x) for x in v]
                if isinstance(v, list)
                else {a: str(b) for a, b in v.items()}
                if isinstance(v, dict)
                else v
            )
            for k, v in asdict(setup).items()
        },
        "baseline": base_info,
        "perturbations": {},
        "clean": {},
        "details": {},
    }
    for key in ("pai", "seed"):
        all_ood = [e for p in perturbed for e in perturbed[p][key]]
        ev = evaluate_episodes(clean[key], all_ood, thresholds[key])
        result["clean"][key] = clean_summary(ev, alpha)
        result["details"][key] = ev
    for p in perturbed:
        result["perturbations"][p] = {
            key: summarise(evaluate_episodes(clean[key], perturbed[p][key], thresholds[key])) for key in ("pai", "seed")
        }
    result["all_targets_met"] = {
        key: all(r[key]["auroc_target_met"] for r in result["perturbations"].values())
        and result["clean"][key]["target_met"]
        for key in ("pai", "seed")
    }
    result["seconds"] = round(time.perf_counter() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ood_bench.json").write_text(json.dumps(result, indent=2))
    png = plot(clean, perturbed, result, out / "ood_bench.png")
    print_table(result)
    print(f"all targets met: pai {result['all_targets_met']['pai']}, seed {result['all_targets_met']['seed']}")
    print(f"wrote {out / 'ood_bench.json'} and {png} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
