"""record-features and analyse-features: the Parquet matches the pipeline, the analysis matches the Parquet."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pai_core.errors import InputError

CAMERAS = {"observation.images.front": (64, 96), "observation.images.wrist": (64, 64)}
EPISODES = [0, 2]  # of 3: episode selection is part of what is tested
FRAMES = 12


def make_models(root: Path) -> tuple[Path, Path, Path]:
    """A small real ACT, a real LeRobot dataset (3 episodes) and a random-init SAE saved with save_sae."""
    from pai_core.sae import SAEConfig, SparseAutoencoder, save_sae
    from pai_core.testing import make_act_policy, make_lerobot_dataset

    policy = make_act_policy(root / "policy", cameras=CAMERAS, chunk_size=4, n_action_steps=4)
    make_lerobot_dataset(root / "dataset", cameras=CAMERAS, episodes=3, frames=FRAMES)
    torch.manual_seed(0)
    sae = save_sae(SparseAutoencoder(SAEConfig(d_in=64, expansion_factor=2, k=4)), root / "sae")
    return policy, root / "dataset", sae


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    from pai_core.analysis.record import RecordConfig, load_record, record_features

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("analysis")
    policy, dataset, sae = make_models(root)
    record_features(
        RecordConfig(
            "pai/synthetic",
            str(policy),
            str(sae),
            str(root / "rec"),
            root=str(dataset),
            episodes=EPISODES,
            batch_size=5,
        ),
        progress=False,
    )
    meta, table = load_record(root / "rec")
    return {"root": root, "policy": policy, "dataset": dataset, "sae": sae, "meta": meta, "df": table.to_pandas()}


@pytest.fixture(scope="module")
def analysed(recorded):
    from pai_core.analysis.analyse import AnalyseConfig, analyse_features

    out = recorded["root"] / "ana"
    summary = analyse_features(
        AnalyseConfig(
            str(recorded["root"] / "rec"), str(out), top_features=4, top_frames=3, clip_radius=2, thumb_height=64
        ),
        progress=False,
    )
    return {**recorded, "out": out, "summary": summary}


def dense(df: pd.DataFrame, n_latents: int) -> np.ndarray:
    """(frames, features) activations rebuilt from the sparse columns."""
    x = np.zeros((len(df), n_latents), np.float32)
    for i, (idx, val) in enumerate(zip(df["feature_indices"], df["feature_values"])):
        x[i, np.asarray(idx, int)] = val
    return x


def pipeline_frames(recorded, episode: int, keep_codes: bool = False):
    from pai_core.pipeline import Pipeline
    from pai_core.sources.dataset import iter_episode, open_dataset

    pipe = Pipeline.load(str(recorded["policy"]), str(recorded["sae"]))
    pipe.keep_codes = keep_codes
    ds = open_dataset("pai/synthetic", recorded["dataset"])
    return pipe.step_batch(list(iter_episode(ds, episode)))


def test_recording_has_one_row_per_frame_of_the_chosen_episodes(recorded):
    df, meta = recorded["df"], recorded["meta"]
    assert len(df) == len(EPISODES) * FRAMES == meta["n_frames"]
    assert meta["frames_missing"] == 0
    for ep in EPISODES:
        rows = df[df.episode_index == ep]
        assert rows.frame_index.tolist() == list(range(FRAMES))
        assert np.allclose(rows.timestamp, np.arange(FRAMES) / 10.0, atol=1e-4)
    assert df["index"].tolist() == [ep * FRAMES + i for ep in EPISODES for i in range(FRAMES)]
    assert [c["short"] for c in meta["cameras"]] == ["front", "wrist"]
    assert [(c["token_rows"], c["token_cols"]) for c in meta["cameras"]] == [(2, 3), (2, 2)]


def test_recorded_activations_are_the_pipelines_frame_features(recorded):
    df, n = recorded["df"], recorded["meta"]["n_latents"]
    frames = pipeline_frames(recorded, 2)
    expected = np.stack([f.features for f in frames])
    got = dense(df[df.episode_index == 2], n)
    assert (expected > 0).sum() > 0
    np.testing.assert_allclose(got, expected, atol=1e-5)
    for idx, val in zip(df["feature_indices"], df["feature_values"]):
        assert len(idx) == len(val) and np.all(np.asarray(val) > 0)  # sparse: only active features stored


def test_recorded_spatial_maxima_locate_the_peak_of_each_features_map(recorded):
    from pai_core.features import feature_maps

    df, meta = recorded["df"], recorded["meta"]
    frames = pipeline_frames(recorded, 0, keep_codes=True)
    layout = frames[0].result.layout
    checked = 0
    for pos in (0, 7):
        row = df[(df.episode_index == 0) & (df.frame_index == pos)].iloc[0]
        codes = frames[pos].codes.unsqueeze(0)
        for cam in meta["cameras"]:
            feats = np.asarray(row[f"{cam['short']}.feature"], int)
            assert feats.size > 0
            maps = feature_maps(codes, layout, feats.tolist())[0][cam["name"]]  # (F, h, w)
            for j in range(feats.size):
                m = maps[j]
                assert row[f"{cam['short']}.value"][j] == pytest.approx(float(m.max()), abs=1e-5)
                r, c = row[f"{cam['short']}.row"][j], row[f"{cam['short']}.col"][j]
                assert m[r, c] == pytest.approx(float(m.max()), abs=1e-5)
                checked += 1
            # a feature absent from a camera's list has no activation anywhere on that camera
            absent = sorted(set(range(meta["n_latents"])) - set(feats.tolist()))[:20]
            assert feature_maps(codes, layout, absent)[0][cam["name"]].max() == 0
        # the pooled (max) activation is the larger of the camera and non-image peaks
        peaks = {}
        for group in [c["short"] for c in meta["cameras"]] + ["nonimage"]:
            for f, v in zip(row[f"{group}.feature"], row[f"{group}.value"]):
                peaks[f] = max(peaks.get(f, 0.0), v)
        pooled = dict(zip(row["feature_indices"], row["feature_values"]))
        assert set(peaks) == set(pooled)
        assert all(peaks[f] == pytest.approx(pooled[f], abs=1e-6) for f in pooled)
    assert checked > 10


def test_ranking_flags_dead_and_always_on_features_as_computed_from_the_parquet(analysed):
    df, s, n = analysed["df"], analysed["summary"], analysed["meta"]["n_latents"]
    x = dense(df, n)
    freq = (x > 0).mean(axis=0)
    dead = np.flatnonzero(freq == 0)
    always = np.flatnonzero(freq >= 0.99)
    assert s["dead_features"] == dead.tolist() and s["always_on_features"] == always.tolist()
    assert s["counts"] == {
        "dead": dead.size,
        "always_on": always.size,
        "active": n - dead.size - always.size,
        "ranked": n - dead.size - always.size,
    }
    var = x.var(axis=0)
    candidates = [f for f in np.argsort(-var, kind="stable") if 0 < freq[f] < 0.99]
    assert [f["feature"] for f in s["features"]] == [int(f) for f in candidates[:4]]
    assert s["ranking"] == [int(f) for f in candidates]
    csv = pd.read_csv(analysed["out"] / "feature_stats.csv")
    np.testing.assert_allclose(csv["variance"], var, rtol=1e-4, atol=1e-6)
    assert (csv["flag"] == "dead").sum() == dead.size


def test_feature_json_lists_the_argmax_frames_of_the_parquet_with_pictures(analysed):
    import av
    import cv2

    df, out, n = analysed["df"], analysed["out"], analysed["meta"]["n_latents"]
    x = dense(df, n)
    for entry in analysed["summary"]["features"]:
        f = entry["feature"]
        doc = json.loads((out / entry["json"]).read_text())
        assert doc["stats"]["count"] == int((x[:, f] > 0).sum())
        assert doc["stats"]["max"] == pytest.approx(float(x[:, f].max()))
        order = sorted(np.flatnonzero(x[:, f] > 0), key=lambda r: (-x[r, f], r))[:3]
        assert [t["row"] for t in doc["top_frames"]] == [int(r) for r in order]
        for t in doc["top_frames"]:
            row = df.iloc[t["row"]]
            assert (t["episode_index"], t["frame_index"]) == (row.episode_index, row.frame_index)
            assert t["index"] == row["index"]
            assert t["activation"] == pytest.approx(float(x[t["row"], f]))
            assert t["recomputed_activation"] == pytest.approx(t["activation"], abs=1e-5)
            assert t["peak_on"] in ("front", "wrist", "latent", "state")
            for cam, peak in t["spatial"].items():  # the re-rendered map peaks where the recording says
                if peak:
                    assert (t["map_peak"][cam]["row"], t["map_peak"][cam]["col"]) == (peak["row"], peak["col"])
            img = cv2.imread(str(out / t["image"]))
            assert img is not None and img.shape[0] == 64 + 22 and img.shape[1] > 64 + 96
        clip = doc["top_frames"][0]["clip"]
        assert clip and all(t["clip"] is None for t in doc["top_frames"][1:])
        with av.open(str(out / clip)) as c:
            n_frames = sum(1 for _ in c.decode(video=0))
        centre = doc["top_frames"][0]["frame_index"]
        assert n_frames == min(FRAMES - 1, centre + 2) - max(0, centre - 2) + 1


def test_index_page_shows_every_selected_feature_with_existing_thumbnails(analysed):
    page = (analysed["out"] / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == sum(3 for _ in analysed["summary"]["features"])
    assert all((analysed["out"] / p).is_file() for p in images)
    for entry in analysed["summary"]["features"]:
        assert f'id="f{entry["feature"]}"' in page


def test_a_minimum_frame_gap_spreads_a_features_top_frames(analysed):
    from pai_core.analysis.analyse import AnalyseConfig, analyse_features

    f = analysed["summary"]["features"][0]["feature"]
    out = analysed["root"] / "ana_gap"
    analyse_features(
        AnalyseConfig(
            str(analysed["root"] / "rec"),
            str(out),
            features=[f],
            top_frames=4,
            min_frame_gap=4,
            clip_radius=0,
            thumb_height=32,
        ),
        progress=False,
    )
    tops = json.loads((out / f"feature_{f:05d}" / "feature.json").read_text())["top_frames"]
    assert len(tops) >= 2
    for a in tops:
        for b in tops:
            if a is not b and a["episode_index"] == b["episode_index"]:
                assert abs(a["frame_index"] - b["frame_index"]) >= 4
    assert all(t["clip"] is None for t in tops)


def test_bad_inputs_are_clear_errors(recorded, tmp_path):
    from pai_core.analysis.analyse import AnalyseConfig, analyse_features
    from pai_core.analysis.record import RecordConfig, record_features

    with pytest.raises(InputError, match="Episode 7 not found"):
        record_features(
            RecordConfig(
                "pai/synthetic",
                str(recorded["policy"]),
                str(recorded["sae"]),
                str(tmp_path / "r"),
                root=str(recorded["dataset"]),
                episodes=[7],
            ),
            progress=False,
        )
    with pytest.raises(InputError, match="not a record-features output"):
        analyse_features(AnalyseConfig(str(tmp_path), str(tmp_path / "a")), progress=False)
    with pytest.raises(InputError, match="rank_by='loudness'"):
        AnalyseConfig(str(tmp_path), str(tmp_path / "a"), rank_by="loudness")
    with pytest.raises(InputError, match=r"features \[999\] are outside 0..127"):
        analyse_features(
            AnalyseConfig(str(recorded["root"] / "rec"), str(tmp_path / "a"), features=[999]), progress=False
        )
