"""``report.html``: OOD timeline, attention share per camera, most active features, and where every
input frame went. Plots are matplotlib PNGs beside the HTML; numbers are shown to 4 significant digits."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..ood import descriptions
from ..pipeline import Frame
from ..sources.accounting import Accounting
from ..topics import camera_short
from .run_info import RunInfo

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclass
class Series:
    """The small per-frame values the plots need (collected as frames go by)."""

    time: list[float] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    threshold: list[float] = field(default_factory=list)
    alarm: list[bool] = field(default_factory=list)
    shares: dict[str, list[float]] = field(default_factory=dict)
    feature_sum: np.ndarray | None = None
    feature_fired: np.ndarray | None = None


class ReportSink:
    """Collects ``Series``; ``write`` renders the report once the replay is over (or broke off)."""

    def __init__(self, info: RunInfo):
        self.series = Series()
        self.feature_names = info.feature_names()
        self.ood = ood_description(info)

    def write(self, frames: Sequence[Frame]) -> None:
        s = self.series
        for f in frames:
            s.time.append(float(f.observation.timestamp))
            res = f.result
            for name, value in [("latent", res.latent_share), ("state", res.state_share)] + [
                (camera_short(c), v) for c, v in res.camera_share.items()
            ]:
                s.shares.setdefault(name, []).append(float(value))
            if f.ood_score is not None:
                s.score.append(f.ood_score)
                s.threshold.append(np.nan if f.threshold is None else f.threshold)
                s.alarm.append(bool(f.alarm.active))
            if f.features is not None:
                if s.feature_sum is None or s.feature_fired is None:
                    s.feature_sum = np.zeros(f.features.shape[0], np.float64)
                    s.feature_fired = np.zeros(f.features.shape[0], np.int64)
                s.feature_sum += f.features
                s.feature_fired += f.features > 0

    def close(self) -> None:
        pass


def fmt(value: object, digits: int = 4) -> str:
    """A number as people read it: floats to ``digits`` significant digits (52.24943542480469 -> 52.25; large
    ones as integers, not 1.235e+04), lists and dicts item by item (one level), anything else as ``str``."""
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isfinite(v) and 10**digits <= abs(v) < 1e15:
            return str(round(v))
        return f"{v:.{digits}g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt_item(v, digits)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt_item(v, digits) for v in value) + "]"
    return str(value)


def _fmt_item(value: object, digits: int) -> str:
    return fmt(value, digits) if isinstance(value, (float, np.floating)) else str(value)


def _episodes(episodes: Sequence) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8" (a calibration set can hold hundreds of episodes)."""
    if not episodes:
        return "not recorded"
    if not all(isinstance(e, (int, np.integer)) for e in episodes):
        return ", ".join(str(e) for e in episodes)
    values, runs = sorted(int(e) for e in episodes), []
    start = prev = values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(runs)


def ood_description(info: RunInfo) -> dict[str, str]:
    """What produced the alarm threshold: score, alpha, calibration set, threshold and whether it was
    overridden (a threshold alone cannot be judged without them)."""
    ood, override, threshold = info.ood, info.threshold_override, info.threshold
    if ood is None:
        out = {"OOD parameters": "no OOD parameters"}
        if override is not None:
            out |= {"threshold": f"{fmt(override)} (set by override)", "threshold overridden": "yes"}
        return out
    calibration = f"{ood.n_calibration} frames" + (f" of {ood.dataset}" if ood.dataset else "")
    return {
        "score": f"{ood.score}: {descriptions().get(ood.score, '')}",
        "alpha": f"{fmt(ood.alpha)} (target false-alarm rate per clean frame)",
        "calibration set": calibration + f", episodes {_episodes(ood.episodes)}",
        "threshold": fmt(threshold),
        "threshold overridden": (
            f"yes (calibrated threshold {fmt(ood.threshold)})"
            if override is not None
            else "no (conformal threshold of the calibration set)"
        ),
    }


def _threshold_label(threshold: list[float]) -> str:
    values = {float(v) for v in threshold if np.isfinite(v)}
    return f"threshold {fmt(values.pop())}" if len(values) == 1 else "threshold"


def _legend_outside(ax: Axes) -> None:
    """Legend right of the axes: inside it would cover the curve, often where it crosses the threshold."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=9)


def ood_figure(series: Series) -> Figure:
    """The OOD timeline: score, threshold (labelled with its value) and alarm spans."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.asarray(series.time) - (series.time[0] if series.time else 0.0)
    fig, ax = plt.subplots(figsize=(11.5, 3.2))
    ax.plot(t[: len(series.score)], series.score, lw=1.2, label="OOD score")
    ax.plot(t[: len(series.score)], series.threshold, "--", color="tab:red", label=_threshold_label(series.threshold))
    alarm = np.asarray(series.alarm)
    if alarm.any():
        ax.fill_between(
            t[: len(alarm)],
            0,
            1,
            where=alarm,
            transform=ax.get_xaxis_transform(),
            color="tab:red",
            alpha=0.15,
            step="mid",
            label="alarm",
        )
    ax.set_xlabel("time (s)")
    ax.set_ylabel("score")
    _legend_outside(ax)
    ax.set_title("OOD score")
    return fig


def share_figure(series: Series) -> Figure:
    """Attention share per input token group, stacked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.asarray(series.time) - (series.time[0] if series.time else 0.0)
    fig, ax = plt.subplots(figsize=(11.5, 3.2))
    names = list(series.shares)
    ax.stackplot(t, *[series.shares[n] for n in names], labels=names, alpha=0.85)
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("share of decoder attention")
    _legend_outside(ax)
    ax.set_title("Attention share per input")
    return fig


#: the report's files: the page and the plots it shows (each plot only when the run has its data)
REPORT_PAGE = "report.html"
OOD_PLOT, SHARE_PLOT, FEATURE_PLOT = "ood_timeline.png", "attention_share.png", "top_features.png"
REPORT_FILES = (REPORT_PAGE, OOD_PLOT, SHARE_PLOT, FEATURE_PLOT)


def _plots(series: Series, names: list[str], out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if series.score:
        made.append(("OOD score with threshold and alarm", _save(ood_figure(series), out / OOD_PLOT)))
    if series.shares:
        made.append(
            (
                "Attention share per camera, state and latent token",
                _save(share_figure(series), out / SHARE_PLOT),
            )
        )
    if series.feature_sum is not None and series.feature_fired is not None and series.time:
        mean = series.feature_sum / len(series.time)
        top = np.argsort(mean)[::-1][:20]
        top = top[mean[top] > 0]
        if top.size:
            fig, ax = plt.subplots(figsize=(10, 0.3 * top.size + 1.2))
            ax.barh(range(top.size), mean[top][::-1], color="tab:purple")
            ax.set_yticks(range(top.size))
            ax.set_yticklabels(
                [f"{names[i]} (fires {100 * series.feature_fired[i] / len(series.time):.0f}%)" for i in top[::-1]],
                fontsize=8,
            )
            ax.set_xlabel("mean pooled activation")
            ax.set_title("Most active SAE features")
            made.append(("Most active SAE features", _save(fig, out / FEATURE_PLOT)))
    return made


def _save(fig: Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")  # keeps a legend placed outside the axes
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def write_report(
    output_dir: str | Path, sink: ReportSink, accounting: Accounting, summary: dict, outputs: dict[str, str]
) -> Path:
    """Render ``report.html`` (and its PNGs) into ``output_dir``; returns its path."""
    out = Path(output_dir)
    plots = _plots(sink.series, sink.feature_names, out)
    e = html.escape
    rows = "".join(f"<tr><th>{e(str(k))}</th><td>{e(fmt(v))}</td></tr>" for k, v in summary.items())
    ood = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in sink.ood.items())
    skipped = "".join(f"<tr><td>{e(r)}</td><td>{n}</td></tr>" for r, n in accounting.frames_skipped.items())
    inputs = "".join(
        f"<tr><td>{e(name)}</td><td>{c.received}</td><td>{c.used}</td><td>"
        + "<br>".join(f"{n} {e(r)}" for r, n in c.skipped.items())
        + "</td></tr>"
        for name, c in accounting.inputs.items()
    )
    files = "".join(f"<li><a href='{e(p)}'>{e(p)}</a> {e(d)}</li>" for p, d in outputs.items())
    error = f"<p class='error'>Replay stopped early: {e(accounting.error)}</p>" if accounting.error else ""
    error += "".join(f"<p class='error'>{e(note)}</p>" for note in accounting.notes)
    if accounting.frames_skipped:
        error += f"<p>Skipped frames: {e(accounting.skip_summary())}</p>"
    images = "".join(f"<h2>{e(title)}</h2><img src='{e(src)}' alt='{e(title)}'>" for title, src in plots)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>pai replay report</title>
<style>body{{font-family:sans-serif;max-width:1050px;margin:2em auto}}td,th{{padding:2px 10px;text-align:left;
vertical-align:top}}table{{border-collapse:collapse}}tr:nth-child(even){{background:#f2f2f2}}
.error{{color:#b00;font-weight:bold}}img{{max-width:100%}}</style></head><body>
<h1>pai replay report</h1>{error}
<table>{rows}</table>
<h2>OOD alarm</h2><table>{ood}</table>
{images}
<h2>Frames</h2><p>{accounting.frames_processed} processed, {sum(accounting.frames_skipped.values())} skipped
of {accounting.frames_total}.</p>
<table><tr><th>skip reason</th><th>frames</th></tr>{skipped or "<tr><td>none</td><td>0</td></tr>"}</table>
<h2>Inputs</h2><table><tr><th>input</th><th>received</th><th>used</th><th>not used</th></tr>{inputs}</table>
<h2>Files</h2><ul>{files}</ul>
</body></html>"""
    path = out / REPORT_PAGE
    path.write_text(page)
    return path
