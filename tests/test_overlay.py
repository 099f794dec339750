"""Overlays: heatmaps land where attention is, at the camera's own resolution."""

from __future__ import annotations

import numpy as np
import pytest

from pai_core import Introspector, OverlayConfig, render_overlays
from pai_core.attention import normalize_maps
from pai_core.overlay import heatmap_overlay
from tests.conftest import random_observation


def test_overlays_have_each_cameras_size_and_differ_from_the_image(policy_dir):
    engine = Introspector.from_pretrained(str(policy_dir))
    obs = random_observation(engine, np.random.default_rng(0))
    res = engine.step(obs)
    for source in ("attention", "rollout"):
        out = render_overlays(obs, res, OverlayConfig(source=source))
        assert set(out) == set(engine.camera_names)
        for name, img in out.items():
            assert img.shape == obs.images[name].shape and img.dtype == np.uint8
            assert np.abs(img.astype(int) - obs.images[name]).mean() > 5


def test_heatmap_is_hot_where_the_map_is_high():
    image = np.full((64, 64, 3), 128, np.uint8)
    heat = np.zeros((2, 2), np.float32)
    heat[0, 1] = 1.0  # top-right cell
    out = heatmap_overlay(image, heat, "jet", alpha=1.0)
    # jet: high values are red, low values blue (RGB order)
    assert out[5, 60, 0] > 100 and out[5, 60, 2] < 60
    assert out[60, 5, 2] > 100 and out[60, 5, 0] < 60


def test_global_normalisation_keeps_cameras_comparable_and_per_camera_does_not():
    maps = {"a": np.array([[0.2, 0.4]]), "b": np.array([[0.05, 0.1]])}
    glob = normalize_maps(maps, "global")
    per = normalize_maps(maps, "per_camera")
    assert glob["a"].max() == 1.0 and glob["b"].max() == pytest.approx(0.25)
    assert per["a"].max() == 1.0 and per["b"].max() == 1.0


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("source", "gradcam", "source='gradcam' is not one of"),
        ("colormap", "rainbowz", "colormap='rainbowz' is not one of"),
        ("alpha", 1.5, "alpha=1.5 must be within"),
        ("normalize", "none", "normalize='none' is not one of"),
    ],
)
def test_invalid_overlay_options_name_the_field_and_the_allowed_values(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        OverlayConfig(**{field: value})


def test_attention_spread_evenly_leaves_the_image_clear_and_a_peak_is_tinted_and_ringed(policy_dir):
    """The demo's 3x4-token map at 96x128 used to tint the whole frame: opacity now follows how far a token is
    above the average token, the map is upsampled smoothly and its peak is ringed."""
    engine = Introspector.from_pretrained(str(policy_dir))
    obs = random_observation(engine, np.random.default_rng(0))
    obs.images["observation.images.front"][:] = 128
    res = engine.step(obs)
    plain = OverlayConfig(label=False, state_bar=False, mark_peak=False)
    even = {"observation.images.front": np.full((3, 4), 1 / 12, np.float32)}
    out = render_overlays(obs, res, plain, maps=even)["observation.images.front"]
    assert np.abs(out.astype(int) - 128).max() <= 1
    peak = np.full((3, 4), 0.05, np.float32)
    peak[1, 2] = 0.45
    tinted = render_overlays(obs, res, plain, maps={"observation.images.front": peak})["observation.images.front"]
    change = np.abs(tinted.astype(int) - 128).sum(-1)
    h, w = change.shape
    assert change[h // 2, int(w * 2.5 / 4)] > 60 and change[5, 5] < 5  # the peak's cell, a far corner
    rows = np.abs(np.diff(change[h // 2].astype(float)))
    assert rows.max() < 40  # smooth: no block edges
    ringed = render_overlays(
        obs, res, OverlayConfig(label=False, state_bar=False), maps={"observation.images.front": peak}
    )["observation.images.front"]
    ring = np.argwhere(np.abs(ringed.astype(int) - tinted).sum(-1) > 0)
    cy, cx = ring.mean(0)
    assert abs(cy - h / 2) < h / 8 and abs(cx - w * 2.5 / 4) < w / 8


def test_the_label_stays_inside_a_small_image():
    from pai_core.overlay import _draw_label

    img = np.zeros((96, 128, 3), np.uint8)
    _draw_label(img, "front 84% state 8% of a long name", left=8)
    cols = np.flatnonzero(img.any(axis=(0, 2)))
    assert cols.size and cols.max() < 127 and cols.min() >= 8
