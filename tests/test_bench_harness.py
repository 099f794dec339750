"""The benchmarks' measuring harness: interleaved rounds in rotated order (bench/timing.py) and the plain LeRobot
baseline that carries no hooks (bench/plain.py), on a small real ACT."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.plain import assert_no_hooks, load_plain, registered_hooks  # noqa: E402
from bench.timing import interleave  # noqa: E402


def test_every_side_runs_once_per_round_and_the_order_rotates_each_round():
    calls: list[str] = []
    sides = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    t = interleave(sides, rounds=4, warmup=1)
    assert calls == list("abcabcbcacababc")  # warm-up, then rounds 0..3
    assert t.rounds == 4 and all(len(v) == 4 for v in t.ms.values())
    assert t.ratio("a", "a") == 1.0 and t.paired_ratio("b", "b") == 1.0


def test_zero_rounds_is_refused():
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        interleave({"a": lambda: None}, rounds=0)


def test_the_plain_load_has_no_hooks_while_the_engine_on_the_same_weights_has_them(policy_dir):
    from pai_core import Introspector

    plain = load_plain(str(policy_dir))
    engine = Introspector.from_pretrained(str(policy_dir))
    assert registered_hooks(plain.policy) == []
    assert_no_hooks(plain.policy, "plain")
    hooks = registered_hooks(engine.policy)
    assert any("multihead_attn: _forward_hooks" in h for h in hooks), hooks
    with pytest.raises(AssertionError, match="engine must run without hooks, but has: .*self_attn"):
        assert_no_hooks(engine.policy, "engine")


def test_the_plain_baseline_computes_the_engines_actions_from_the_same_uint8_frame(policy_dir):
    from pai_core import Introspector, Observation

    plain = load_plain(str(policy_dir))
    engine = Introspector.from_pretrained(str(policy_dir))
    rng = np.random.default_rng(0)
    obs = Observation(
        images={k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k, (h, w) in engine.image_shapes.items()},
        state=rng.normal(size=engine.state_dim).astype(np.float32),
    )
    with torch.inference_mode():
        chunk = plain.postprocessor(
            plain.policy.predict_action_chunk(plain.preprocessor(plain.to_lerobot(obs.images, obs.state)))
        )
    np.testing.assert_allclose(engine.step_batch([obs])[0].action_chunk, chunk[0].numpy(), rtol=1e-5, atol=1e-5)
