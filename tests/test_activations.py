"""Recording encoder tokens of a real LeRobot dataset through the engine, and streaming them back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pai_core import InputError, IntrospectionConfig, Introspector
from pai_core.activations import (
    MANIFEST,
    ActivationStore,
    RecordConfig,
    read_shard,
    record_activations,
    sample_tokens,
    shard_name,
    token_batches,
)
from pai_core.sources.dataset import iter_episode
from pai_core.testing import make_act_policy, make_lerobot_dataset

CAMERA = {"observation.images.front": (96, 128)}  # 3 x 4 camera tokens + latent + state = 14 tokens


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("acts")
    dataset = make_lerobot_dataset(base / "ds", cameras=CAMERA, episodes=3, frames=10)
    policy = make_act_policy(base / "policy", cameras=CAMERA)
    out = base / "recording"
    summary = record_activations(
        dataset, str(policy), out, config=RecordConfig(batch_size=4, shard_frames=4), progress=False
    )
    return dataset, policy, out, summary


def test_recording_stores_the_engines_tokens_with_episode_and_frame_index(setup):
    dataset, policy, out, summary = setup
    assert summary == {"frames_recorded": 30, "frames_skipped_existing": 0, "frames_total": 30, "shards": 9}
    engine = Introspector.from_pretrained(str(policy), IntrospectionConfig(rollout=False))
    observations = list(iter_episode(dataset, 1))
    expected = torch.stack([r.tokens for r in engine.step_batch(observations)])
    shards = [read_shard(out / shard_name(1, start)) for start in (0, 4, 8)]
    tokens = torch.cat([s["tokens"] for s in shards])
    assert tokens.dtype == torch.float16 and tokens.shape == (10, 14, 64)
    torch.testing.assert_close(tokens.float(), expected, atol=2e-2, rtol=2e-3)
    assert torch.cat([s["episode_index"] for s in shards]).tolist() == [1] * 10
    assert torch.cat([s["frame_index"] for s in shards]).tolist() == list(range(10))
    manifest = json.loads((out / MANIFEST).read_text())
    assert (manifest["d_model"], manifest["tokens_per_frame"], manifest["layer"]) == (64, 14, -1)


def test_recording_again_skips_finished_shards_and_redoes_only_a_missing_one(setup):
    dataset, policy, out, _ = setup
    lost = out / shard_name(2, 4)
    before = read_shard(lost)
    lost.unlink()
    summary = record_activations(
        dataset, str(policy), out, config=RecordConfig(batch_size=4, shard_frames=4), progress=False
    )
    assert summary["frames_recorded"] == 4 and summary["frames_skipped_existing"] == 26
    after = read_shard(lost)
    assert torch.equal(after["tokens"], before["tokens"]) and after["frame_index"].tolist() == [4, 5, 6, 7]
    assert not list(out.glob("*.tmp"))


def test_recording_into_a_directory_that_holds_another_recording_is_refused(setup):
    dataset, policy, out, _ = setup
    with pytest.raises(InputError, match="dtype: 'float16' != 'float32'"):
        record_activations(
            dataset,
            str(policy),
            out,
            episodes=[0],
            config=RecordConfig(batch_size=4, shard_frames=4, dtype="float32"),
            progress=False,
        )
    assert json.loads((out / MANIFEST).read_text())["dtype"] == "float16"


def test_block_sampling_keeps_latent_and_state_tokens_and_averages_camera_blocks(setup, tmp_path):
    dataset, policy, _, _ = setup
    record_activations(
        dataset,
        str(policy),
        tmp_path,
        episodes=[0],
        config=RecordConfig(shard_frames=10, sampling="blocks", block=2, dtype="float32"),
        progress=False,
    )
    sampled = read_shard(tmp_path / shard_name(0, 0))["tokens"]
    engine = Introspector.from_pretrained(str(policy), IntrospectionConfig(rollout=False))
    results = engine.step_batch(list(iter_episode(dataset, 0)))
    full = torch.stack([r.tokens for r in results])
    assert sampled.shape == (10, 2 + 2 * 2, 64)  # 3x4 camera grid -> 2x2 blocks (the last row alone)
    torch.testing.assert_close(sampled[:, :2], full[:, :2])
    grid = full[:, 2:].reshape(10, 3, 4, 64)
    torch.testing.assert_close(sampled[:, 2], grid[:, 0:2, 0:2].mean((1, 2)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sampled[:, 5], grid[:, 2:3, 2:4].mean((1, 2)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sample_tokens(full, results[0].layout, 1), full)


def test_token_batches_give_every_token_once_per_epoch_in_a_seeded_order(setup):
    store = ActivationStore(setup[2])
    all_tokens = store.load_tokens()
    assert all_tokens.shape == (store.count_tokens(), 64) == (30 * 14, 64)
    batches = list(token_batches(store.shards, 64, seed=3, buffer_shards=2))
    assert [b.shape[0] for b in batches[:-1]] == [64] * (len(batches) - 1) and batches[-1].shape[0] == 420 % 64
    streamed = torch.cat(batches)
    key = lambda t: t[torch.from_numpy(np.lexsort(t.T.numpy()[::-1].copy()))]  # noqa: E731
    assert torch.equal(key(streamed), key(all_tokens))
    again = torch.cat(list(token_batches(store.shards, 64, seed=3, buffer_shards=2)))
    other = torch.cat(list(token_batches(store.shards, 64, seed=4, buffer_shards=2)))
    assert torch.equal(again, streamed) and not torch.equal(other, streamed)
    repeating = token_batches(store.shards, 100, seed=3, repeat=True)
    assert sum(next(repeating).shape[0] for _ in range(10)) == 1000  # more than one epoch, full batches


def test_held_out_split_keeps_whole_episodes_out_of_training(setup):
    store = ActivationStore(setup[2])
    train, held = store.split(0.34, seed=0)
    train_eps = {store.shard_episode(s) for s in train}
    held_eps = {store.shard_episode(s) for s in held}
    assert len(held_eps) == 1 and train_eps.isdisjoint(held_eps) and train_eps | held_eps == {0, 1, 2}
    assert sorted(train + held) == store.shards


def test_reading_a_directory_without_a_recording_names_the_missing_manifest(tmp_path):
    with pytest.raises(InputError, match=f"{MANIFEST} is missing"):
        ActivationStore(tmp_path)
