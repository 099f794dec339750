"""Several datasets and several episodes: activation recording and SAE training on the union of datasets (the
seed's ``[repo_a,repo_b]``), and ``pai replay`` of every episode when ``--episodes`` is omitted."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from pai_core import InputError
from pai_core.activations import MANIFEST, ActivationStore, parse_datasets, read_shard
from pai_core.cli import main
from pai_core.testing import make_act_policy, make_lerobot_dataset

CAMERA = {"observation.images.front": (16, 16)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny ACT and two datasets of different sizes: pai/a (2 episodes x 3 frames), pai/b (3 x 2)."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("multi")
    policy = make_act_policy(
        base / "policy",
        cameras=CAMERA,
        dim_model=16,
        n_heads=2,
        dim_feedforward=16,
        n_encoder_layers=1,
        chunk_size=4,
        n_action_steps=4,
    )
    make_lerobot_dataset(base / "a", repo_id="pai/a", cameras=CAMERA, episodes=2, frames=3, seed=1)
    make_lerobot_dataset(base / "b", repo_id="pai/b", cameras=CAMERA, episodes=3, frames=2, seed=2)
    return base, policy


def test_recording_two_datasets_gives_the_union_of_their_frames(world, tmp_path, capsys):
    base, policy = world
    out = tmp_path / "acts"
    assert (
        main(
            [
                "record-activations",
                "--dataset-repo-id",
                "pai/a,pai/b",
                "--root",
                f"{base / 'a'},{base / 'b'}",
                "--policy-path",
                str(policy),
                "--output-dir",
                str(out),
                "--shard-frames",
                "2",
                "--frames-per-batch",
                "4",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames_total"] == summary["frames_recorded"] == 2 * 3 + 3 * 2
    store = ActivationStore(out)
    frames = set()
    for shard in store.shards:
        data = read_shard(shard)
        frames |= set(zip(data["dataset_index"].tolist(), data["episode_index"].tolist(), data["frame_index"].tolist()))
        assert {store.shard_dataset(shard)} == set(data["dataset_index"].tolist())
    expected = {(0, e, f) for e in range(2) for f in range(3)} | {(1, e, f) for e in range(3) for f in range(2)}
    assert frames == expected
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["dataset"] == "pai/a,pai/b" and manifest["dataset_root"] == ""
    assert [(d["repo_id"], d["episodes"]) for d in manifest["datasets"]] == [("pai/a", [0, 1]), ("pai/b", [0, 1, 2])]
    # held-out episodes are whole (dataset, episode) pairs: episode 0 of pai/a is not episode 0 of pai/b
    train, held = store.split(0.4, seed=0)
    assert not {store.shard_key(s) for s in train} & {store.shard_key(s) for s in held}
    assert len({store.shard_key(s) for s in held}) == 2 and sorted(train + held) == store.shards
    assert store.episode_labels(held)[0].startswith(("pai/a:", "pai/b:"))
    # recording again resumes: every shard is there
    assert (
        main(
            [
                "record-activations",
                "--dataset-repo-id",
                "[pai/a, pai/b]",
                "--root",
                f"{base / 'a'},{base / 'b'}",
                "--policy-path",
                str(policy),
                "--output-dir",
                str(out),
                "--shard-frames",
                "2",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["frames_skipped_existing"] == 12


def test_a_dataset_s_tokens_are_the_same_recorded_alone_or_with_another(world, tmp_path):
    from pai_core.activations import RecordConfig, open_datasets, record_activations

    base, policy = world
    cfg = RecordConfig(shard_frames=3, dtype="float32")
    both = record_activations(
        open_datasets("pai/a,pai/b", f"{base / 'a'},{base / 'b'}"),
        str(policy),
        tmp_path / "both",
        config=cfg,
        progress=False,
    )
    alone = record_activations(
        open_datasets("pai/b", str(base / "b")), str(policy), tmp_path / "alone", config=cfg, progress=False
    )
    assert both["frames_total"] == 12 and alone["frames_total"] == 6
    for e in range(3):
        a = read_shard(tmp_path / "alone" / f"episode_{e:06d}_frame_000000.safetensors")["tokens"]
        b = read_shard(tmp_path / "both" / f"dataset_01_episode_{e:06d}_frame_000000.safetensors")["tokens"]
        torch.testing.assert_close(a, b)


def test_train_sae_records_and_trains_on_several_datasets(world, tmp_path, capsys):
    base, policy = world
    out = tmp_path / "sae"
    assert (
        main(
            [
                "train-sae",
                "--dataset-repo-id",
                "pai/a,pai/b",
                "--root",
                f"{base / 'a'},{base / 'b'}",
                "--policy-path",
                str(policy),
                "--output-dir",
                str(out),
                "--shard-frames",
                "2",
                "--steps",
                "3",
                "--batch-size",
                "32",
                "--expansion-factor",
                "2",
                "--k",
                "4",
                "--aux-k",
                "4",
                "--checkpoint-every",
                "3",
                "--val-fraction",
                "0.4",
            ]
        )
        == 0
    )
    capsys.readouterr()
    extra = json.loads((out / "config.json").read_text())["extra"]
    assert [d["repo_id"] for d in extra["datasets"]] == ["pai/a", "pai/b"]
    labels = extra["train_episodes"] + extra["held_out_episodes"]
    assert sorted(labels) == ["pai/a:0", "pai/a:1", "pai/b:0", "pai/b:1", "pai/b:2"]
    assert not set(extra["train_episodes"]) & set(extra["held_out_episodes"])


def test_dataset_lists_are_read_in_the_seed_s_form_and_mismatches_are_named(tmp_path):
    refs = parse_datasets("[pai/a, pai/b]", "r1,r2")
    assert [(r.repo_id, r.root) for r in refs] == [("pai/a", "r1"), ("pai/b", "r2")]
    assert [(r.repo_id, r.root) for r in parse_datasets("pai/a,pai/b")] == [("pai/a", None), ("pai/b", None)]
    with pytest.raises(InputError, match=r"lists 1 folders for 2 datasets \['pai/a', 'pai/b'\]"):
        parse_datasets("pai/a,pai/b", "r1")
    with pytest.raises(InputError, match=r"dataset 'pai/a' at r1 is listed twice"):
        parse_datasets("pai/a,pai/a", "r1,r1")
    with pytest.raises(InputError, match="expected one repo id or a comma-separated list"):
        parse_datasets("pai/a,,pai/b")


def test_choosing_episodes_of_several_datasets_is_refused(world, tmp_path, capsys):
    base, policy = world
    rc = main(
        [
            "record-activations",
            "--dataset-repo-id",
            "pai/a,pai/b",
            "--root",
            f"{base / 'a'},{base / 'b'}",
            "--policy-path",
            str(policy),
            "--output-dir",
            str(tmp_path / "acts"),
            "--episodes",
            "0",
        ]
    )
    assert rc == 1 and "--episodes [0] selects episodes of one dataset; with 2 datasets" in capsys.readouterr().err


def test_replay_without_episode_id_replays_every_episode(world, tmp_path, capsys):
    base, policy = world
    out = tmp_path / "all"
    assert (
        main(
            [
                "replay",
                "--dataset-repo-id",
                "pai/b",
                "--root",
                str(base / "b"),
                "--policy-path",
                str(policy),
                "--output-dir",
                str(out),
                "--no-mcap",
                "--no-video",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    index = json.loads((out / "episodes.json").read_text())
    assert index["dataset"] == "pai/b" and sorted(index["episodes"]) == ["0", "1", "2"]
    for e in range(3):
        folder = out / f"episode_{e:06d}"
        table = pq.read_table(folder / "attention.parquet").to_pandas()
        assert set(table["episode"]) == {e} and list(table["frame"]) == [0, 1]
        assert (folder / "report.html").is_file() and index["episodes"][str(e)]["frames processed"] == 2
        assert f"episode {e}: replayed 2 frames" in printed
    # a chosen few: only those; one: straight into --output-dir as before
    assert (
        main(
            [
                "replay",
                "--dataset-repo-id",
                "pai/b",
                "--root",
                str(base / "b"),
                "--policy-path",
                str(policy),
                "--output-dir",
                str(tmp_path / "some"),
                "--episodes",
                "0",
                "2",
                "--no-mcap",
                "--no-video",
                "--no-progress",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "some").iterdir()) == [
        "episode_000000",
        "episode_000002",
        "episodes.json",
    ]
    assert (
        main(
            [
                "replay",
                "--dataset-repo-id",
                "pai/b",
                "--root",
                str(base / "b"),
                "--policy-path",
                str(policy),
                "--output-dir",
                str(tmp_path / "one"),
                "--episodes",
                "1",
                "--no-mcap",
                "--no-video",
                "--no-progress",
            ]
        )
        == 0
    )
    assert set(pq.read_table(tmp_path / "one" / "attention.parquet").to_pandas()["episode"]) == {1}
