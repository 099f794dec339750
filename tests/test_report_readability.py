"""Readable replay outputs: the report names what produced the threshold and rounds its numbers, legends stay
off the data, and OOD overlays use one fixed scale so a clean frame looks clean."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pai_core import Observation, OverlayConfig, render_overlays
from pai_core.testing import synthetic_frame
from tests.replay_helpers import CAMERAS, make_sae

LONG_THRESHOLD = 0.012345678912345678  # what the report must not print in full
PLAIN = OverlayConfig(label=False, state_bar=False, mark_peak=False)  # pixels compare with the camera image only
PER_FRAME = OverlayConfig(label=False, state_bar=False, mark_peak=False, weighted=False)  # the old, tinted look


def observations(n: int) -> list[Observation]:
    rng = np.random.default_rng(0)
    return [
        Observation(
            images={k: synthetic_frame(h, w, i / max(n - 1, 1), seed=i) for k, (h, w) in CAMERAS.items()},
            state=rng.normal(size=6).astype(np.float32),
            timestamp=100.0 + 0.1 * i,
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    from pai_core.ood import OODParams

    sae = make_sae(tmp_path_factory.mktemp("sae") / "sae")
    OODParams(
        threshold=LONG_THRESHOLD, alpha=0.05, n_calibration=120, dataset="pai/synthetic", episodes=[0, 1, 2, 5, 7, 8]
    ).save(sae / "ood_params.json")
    return sae


def pipeline(policy_dir, sae_dir=None):
    from pai_core.pipeline import Pipeline

    return Pipeline.load(str(policy_dir), str(sae_dir) if sae_dir else "")


def replay_report(pipe, out) -> str:
    from pai_core.replay.api import ReplayOptions, replay
    from pai_core.sources.accounting import Accounting

    replay(
        observations(6),
        pipe,
        ReplayOptions(out, batch_size=3, video=False, mcap=False, progress=False),
        Accounting(),
        total=6,
        source="test frames",
    )
    return (out / "report.html").read_text()


def cell(page: str, header: str) -> str:
    match = re.search(rf"<tr><th>{re.escape(header)}</th><td>(.*?)</td></tr>", page)
    assert match, f"no row {header!r} in the report"
    return match.group(1)


def test_report_names_score_alpha_and_calibration_set_and_rounds_the_threshold(policy_dir, sae_dir, tmp_path):
    page = replay_report(pipeline(policy_dir, sae_dir), tmp_path)
    assert "<h2>OOD alarm</h2>" in page
    assert cell(page, "score").startswith("sae_recon_mse: mean token reconstruction error")
    assert cell(page, "alpha").startswith("0.05 ")
    assert cell(page, "calibration set") == "120 frames of pai/synthetic, episodes 0-2, 5, 7-8"
    assert cell(page, "threshold") == "0.01235"  # 4 significant digits, in both tables
    assert page.count("<td>0.01235</td>") == 2
    assert cell(page, "threshold overridden").startswith("no")
    assert "0.0123456" not in page
    assert not re.search(r"\d\.\d{7,}", page), re.search(r"\d\.\d{7,}", page).group(0)


def test_report_says_when_the_threshold_was_overridden_and_when_there_are_no_ood_parameters(
    policy_dir, sae_dir, tmp_path
):
    from pai_core.replay.report import ReportSink
    from pai_core.replay.run_info import RunInfo

    pipe = pipeline(policy_dir, sae_dir)
    pipe.threshold_override = 3.14159265358979
    page = replay_report(pipe, tmp_path)
    assert cell(page, "threshold") == "3.142"
    assert cell(page, "threshold overridden") == "yes (calibrated threshold 0.01235)"
    assert ReportSink(RunInfo.of(pipeline(policy_dir))).ood == {"OOD parameters": "no OOD parameters"}


def test_summary_numbers_are_rounded_to_four_significant_digits():
    from pai_core.replay.report import fmt

    assert fmt(52.24943542480469) == "52.25"
    assert fmt(np.float32(0.000123456)) == "0.0001235"
    assert fmt(123456.789) == "123457"
    assert fmt([1.23456789, 2, "x"]) == "[1.235, 2, x]"
    assert fmt({"a": 0.987654321, "b": None}) == "{a: 0.9877, b: None}"
    assert fmt(7) == "7" and fmt(True) == "True" and fmt(None) == "None"


def test_plot_legends_lie_outside_the_axes_and_the_threshold_line_shows_its_value():
    from pai_core.replay.report import Series, ood_figure, share_figure

    t = list(np.linspace(0, 5, 50))
    score = list(np.linspace(0, 100, 50))
    series = Series(
        time=t,
        score=score,
        threshold=[52.24943542480469] * 50,
        alarm=[s > 52.25 for s in score],
        shares={"latent": [0.2] * 50, "state": [0.3] * 50, "front": [0.5] * 50},
    )
    for fig in (ood_figure(series), share_figure(series)):
        fig.canvas.draw()
        ax = fig.axes[0]
        legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.x0 >= axes.x1, (legend, axes)  # entirely right of the plotted area
    labels = [t.get_text() for t in ood_figure(series).axes[0].get_legend().get_texts()]
    assert labels == ["OOD score", "threshold 52.25", "alarm"]


# ------------------------------------------------------------------------------- overlays on a fixed scale
@pytest.fixture(scope="module")
def engine_frame(policy_dir):
    from pai_core import Introspector

    engine = Introspector.from_pretrained(str(policy_dir))
    obs = observations(1)[0]
    return obs, engine.step(obs)


def change(overlays: dict[str, np.ndarray], obs: Observation) -> dict[str, float]:
    return {k: float(np.abs(img.astype(int) - obs.images[k]).mean()) for k, img in overlays.items()}


def test_a_fixed_scale_leaves_a_zero_map_untinted_and_tints_a_map_at_its_top(engine_frame):
    obs, res = engine_frame
    zeros = {k: np.zeros((4, 4), np.float32) for k in obs.images}
    top = {k: np.full((4, 4), 2.0, np.float32) for k in obs.images}
    untinted = render_overlays(obs, res, PLAIN, maps=zeros, scale=(0.0, 2.0))
    assert all(np.abs(img.astype(int) - obs.images[k]).max() <= 1 for k, img in untinted.items())
    assert all(v > 25 for v in change(render_overlays(obs, res, PLAIN, maps=top, scale=(0.0, 2.0)), obs).values())
    # Below the low end is untinted too (negative z), and a per-camera scale is applied per camera.
    below = {k: np.full((4, 4), -3.0, np.float32) for k in obs.images}
    assert max(change(render_overlays(obs, res, PLAIN, maps=below, scale=(0.0, 2.0)), obs).values()) < 0.5
    per_camera = {"observation.images.front": (0.0, 2.0), "observation.images.wrist": (0.0, 200.0)}
    mixed = change(render_overlays(obs, res, PLAIN, maps=top, scale=per_camera), obs)
    assert mixed["observation.images.front"] > 25 > 2 > mixed["observation.images.wrist"]


def test_small_noise_stays_cool_on_a_fixed_scale_but_per_frame_normalisation_makes_it_hot(engine_frame):
    obs, res = engine_frame
    rng = np.random.default_rng(1)
    noise = {k: (0.01 + 0.005 * rng.random((4, 4))).astype(np.float32) for k in obs.images}
    per_frame = change(render_overlays(obs, res, PER_FRAME, maps=noise), obs)
    fixed = change(render_overlays(obs, res, PLAIN, maps=noise, scale=(0.0, 1.0)), obs)
    assert all(v > 25 for v in per_frame.values()), per_frame
    assert all(v < 2 for v in fixed.values()), fixed


def test_the_ood_video_scale_follows_the_threshold_so_clean_frames_look_clean(policy_dir, sae_dir, tmp_path):
    import av

    from pai_core.replay.run_info import RunInfo, ood_map_scale
    from pai_core.replay.video import Mp4Writer, VideoSink

    pipe = pipeline(policy_dir, sae_dir)
    frames = pipe.step_batch(observations(4))
    peak = max(float(m.max()) for f in frames for m in f.ood_maps.values())
    assert ood_map_scale(pipe) == (0.0, 2 * LONG_THRESHOLD)

    images = [f.observation.images["observation.images.front"] for f in frames]

    def video_change(path) -> float:
        with av.open(str(path)) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(decoded) == len(frames)
        return float(np.mean([np.abs(d.astype(int) - i).mean() for d, i in zip(decoded, images)]))

    def ood_video_change(threshold: float | None, use_pipeline: bool = True, config: OverlayConfig = PLAIN) -> float:
        pipe.threshold_override = threshold
        out = tmp_path / f"{threshold}-{use_pipeline}"
        out.mkdir()
        sink = VideoSink(out, 10.0, config, maps=("ood",), info=RunInfo.of(pipe) if use_pipeline else None)
        sink.write(frames)
        sink.close()
        return video_change(out / "front_ood.mp4")

    plain = Mp4Writer(tmp_path / "plain.mp4", 10.0)  # the camera images alone: what H.264 itself changes
    for image in images:
        plain.write(image)
    plain.close()
    codec = video_change(tmp_path / "plain.mp4")
    clean = ood_video_change(10 * peak)  # every map far below the threshold: (nearly) the camera image
    alarming = ood_video_change(peak / 10)  # every map far above it: tinted throughout
    per_frame = ood_video_change(10 * peak, use_pipeline=False, config=PER_FRAME)  # the old look: hot regardless
    assert clean < codec + 1.0 < 20 < alarming, (codec, clean, alarming)
    assert per_frame > 20, per_frame


def test_patch_knn_maps_reach_full_heat_where_one_patch_alone_would_reach_the_threshold(policy_dir, sae_dir, tmp_path):
    import torch

    from pai_core.ood import OODParams
    from pai_core.ood.patch_knn import PatchKnnConfig, PatchKnnScorer, patch_grid
    from pai_core.replay.run_info import ood_map_scale

    g = torch.Generator().manual_seed(0)
    patterns = torch.randn(10, 4, 6, 8, generator=g)
    grids = torch.stack([patterns[i % 10] for i in range(40)]) + 0.05 * torch.randn(40, 4, 6, 8, generator=g)
    cfg = PatchKnnConfig(k_frames=3, max_grid=(6, 8))
    states = np.asarray([[float(i % 10)] for i in range(40)], np.float32)
    scorer = PatchKnnScorer.from_grids(
        {"cam": patch_grid([grids], cfg.max_grid)}, states, np.repeat(np.arange(4), 10), cfg
    )
    scorer.save_file(tmp_path / "patch_reference.safetensors")
    pipe = pipeline(policy_dir, sae_dir)
    pipe.ood = OODParams(
        threshold=1.25, alpha=0.01, score="patch_knn", reference="patch_reference.safetensors", source_dir=str(tmp_path)
    )
    q_z = pipe.scorer.cameras["cam"].q_z
    assert q_z > 0
    assert ood_map_scale(pipe) == {"cam": (0.0, pytest.approx(1.25 * q_z))}
    pipe.threshold_override = 2.5  # the threshold in force sets the scale
    assert ood_map_scale(pipe)["cam"][1] == pytest.approx(2.5 * q_z)
    pipe.ood = None
    assert ood_map_scale(pipe) is None  # no OOD parameters: per-frame normalisation
