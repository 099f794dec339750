"""The demo's closing report: where to look (overlays, features, OOD timeline) and the numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .demo import DemoConfig


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def plot_alarm_timeline(clean_dir: Path, perturbed_dir: Path, perturbation: str, path: Path) -> Path | None:
    """OOD score of the clean and the perturbed replay on one plot, threshold and first alarm marked."""
    import pyarrow.parquet as pq

    tables = {}
    for name, folder in (("clean", clean_dir), (perturbation, perturbed_dir)):
        f = folder / "ood.parquet"
        if not f.is_file():
            return None
        tables[name] = pq.read_table(f).to_pydict()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    for (name, t), color in zip(tables.items(), ("#4c72b0", "#dd8452")):
        ax.plot(t["score"], color=color, label=name)
        alarms = [i for i, a in enumerate(t["alarm"]) if a]
        if alarms:
            ax.axvline(alarms[0], color=color, ls=":", lw=1.2)
            ax.plot(alarms[0], t["score"][alarms[0]], "v", color="#c44e52", ms=9)
    threshold = next(iter(tables.values()))["threshold"][0]
    ax.axhline(threshold, color="#c44e52", ls="--", lw=1.2, label="threshold")
    ax.set_xlabel("frame")
    ax.set_ylabel("OOD score")
    ax.set_title("OOD score per frame (v: alarm raised)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_demo_report(cfg: DemoConfig, log: list[dict]) -> str:
    out = cfg.output_dir
    lines = ["# pai demo report", ""]
    lines += ["| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {e['stage']} | {e['status']} | {e['seconds']} |" for e in log]
    lines.append("")
    ev = _load(out / "policy" / "eval" / "evaluation.json")
    tr = _load(out / "policy" / "training.json")
    if tr:
        lines.append(
            f"- policy: {tr['steps']} training steps in {tr['seconds']} s, final loss {tr['final_loss']:.3f} "
            f"({out / 'policy' / 'training_loss.png'})"
        )
    if ev:
        lines.append(
            f"- closed-loop success rate: {ev['success_rate']:.0%} ({ev['successes']} of {ev['episodes']} "
            f"episodes), rollouts: {ev.get('video', out / 'policy' / 'eval' / 'rollouts.mp4')}"
        )
    ood = _load(out / "ood_eval" / "ood_evaluation.json")
    if ood:
        lines.append(
            f"- OOD detector (clean vs {', '.join(cfg.perturbations)}): AUROC {ood.get('auroc', float('nan')):.3f}, "
            f"TPR at threshold {ood.get('tpr_at_threshold', float('nan')):.2f}, false-positive rate "
            f"{ood.get('false_positive_rate_at_threshold', float('nan')):.3f} (alpha {cfg.alpha}); plot: "
            f"{out / 'ood_eval' / 'ood_evaluation.png'}"
        )
    clean, pert = out / "replay" / "clean", out / "replay" / cfg.replay_perturbation
    timeline = plot_alarm_timeline(clean, pert, cfg.replay_perturbation, out / "ood_timeline.png")
    for name, folder in (("clean", clean), (cfg.replay_perturbation, pert)):
        table = folder / "ood.parquet"
        if table.is_file():
            import pyarrow.parquet as pq

            alarm = pq.read_table(table).column("alarm").to_pylist()
            first = next((i for i, a in enumerate(alarm) if a), None)
            lines.append(
                f"- replay {name}: alarm {'raised at frame ' + str(first) if first is not None else 'never raised'}"
                f" of {len(alarm)}; overlays and report: {folder / 'report.html'}"
            )
    if timeline:
        lines.append(f"- OOD timeline, clean vs {cfg.replay_perturbation}: {timeline}")
    feats = out / "features" / "analysis" / "index.html"
    if feats.is_file():
        lines.append(f"- SAE feature analysis: {feats}")
    lines += [
        "",
        "Open in Foxglove: File > Open local file... and pick "
        f"{pert / 'replay.mcap'} (images with attention overlays, OOD score, alarm); or run "
        f"`pai replay --bag {out / 'bags' / cfg.replay_perturbation} "
        f"--policy-path {out / 'policy' / 'pretrained_model'} "
        f"--sae-path {out / 'sae'} --foxglove 8765` and connect Foxglove to ws://127.0.0.1:8765.",
    ]
    text = "\n".join(lines)
    (out / "report.md").write_text(text + "\n")
    return text
