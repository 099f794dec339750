"""The CUDA-graph live path, every part that does not need a GPU: the adapter's capture fix, the static
input and output buffers and their copies (the captured function run eagerly), and the guards. The
capture and replay themselves are tested on CUDA in tests/gpu/."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pai_core import InputError, IntrospectionConfig, Introspector, Observation
from pai_core.adapters.graph_safe import DeviceFactories
from pai_core.cuda_graph import GraphStep, LiveGraph, StaticInputs
from tests.conftest import random_observation


@pytest.fixture(scope="module")
def engines(policy_dir):
    """Two engines on the same two-camera policy: the eager path and the static-buffer path."""
    eager = Introspector.from_pretrained(str(policy_dir))
    static = Introspector.from_pretrained(str(policy_dir))
    static.graph = LiveGraph.without_capture(static)
    return eager, static


def test_act_capture_fix_leaves_the_forward_bit_identical_and_makes_the_zero_latent_on_the_device(engines):
    engine, _ = engines
    batch = engine._preprocess([random_observation(engine, np.random.default_rng(0))])
    with torch.inference_mode():
        plain_actions, plain = engine.adapter.forward(batch)
        fix = engine.adapter.graph_safe(engine.device)
        with fix:
            fixed_actions, fixed = engine.adapter.forward(batch)
    assert isinstance(fix, DeviceFactories)
    assert "zeros" in fix.redirected  # ACT.forward's torch.zeros(...).to(device) latent, seen and placed
    assert torch.equal(plain_actions, fixed_actions)
    assert torch.equal(plain.cross_attention, fixed.cross_attention)
    assert all(torch.equal(a, b) for a, b in zip(plain.encoder_attention, fixed.encoder_attention))
    assert torch.equal(plain.tokens, fixed.tokens)


def test_device_factories_place_only_deviceless_factories_and_scalar_tensors():
    fix = DeviceFactories("meta")
    with fix:
        assert torch.zeros(2, 3, dtype=torch.float32).device.type == "meta"
        assert torch.ones(4).device.type == "meta"
        assert torch.zeros(2, device="cpu").device.type == "cpu"  # an explicit device is kept
        eps = torch.tensor(1e-8, device="meta")  # LeRobot's normaliser epsilon: a fill, not a host copy
        assert eps.device.type == "meta" and eps.dtype == torch.get_default_dtype() and eps.shape == ()
        data = torch.tensor([1.0, 2.0])  # real data is never moved
        assert data.device.type == "cpu"
    assert fix.redirected == ["zeros", "ones", "tensor"]
    assert torch.zeros(1).device.type == "cpu"  # nothing leaks out of the context


def assert_same_result(a, b):
    assert np.array_equal(a.action, b.action)
    assert np.array_equal(a.action_chunk, b.action_chunk)
    for maps in ("attention", "rollout"):
        assert list(getattr(a, maps)) == list(getattr(b, maps))
        for cam in getattr(a, maps):
            assert np.array_equal(getattr(a, maps)[cam], getattr(b, maps)[cam]), f"{maps} {cam}"
    assert a.camera_share == b.camera_share and a.state_share == b.state_share and a.latent_share == b.latent_share
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.input_tokens, b.input_tokens)


def test_static_buffer_steps_equal_eager_steps_through_refills_of_the_action_queue(engines):
    """Chunk 6 executed 3 at a time: the queue is refilled at steps 0, 3, 6 from the static action buffer,
    which the next steps overwrite; a view kept in the queue would change the actions of steps 1-2, 4-5."""
    eager, static = engines
    rng = np.random.default_rng(1)
    observations = [random_observation(eager, rng, t) for t in range(8)]
    eager.reset()
    static.reset()
    for obs in observations:
        a, b = eager.step(obs), static.step(obs)
        assert_same_result(a, b)
        out = static.graph._step.outputs
        queued = static.policy._action_queue
        assert all(q.untyped_storage().data_ptr() != out.actions.untyped_storage().data_ptr() for q in queued)
        assert b.tokens.data_ptr() != out.tokens.data_ptr(), "a kept result must not alias the graph's buffer"
    assert len({tuple(np.round(eager.step(o).action_chunk[0], 6)) for o in observations}) == len(observations)


def test_static_buffer_path_recaptures_when_vision_features_are_switched_on(engines):
    eager, static = engines
    obs = random_observation(eager, np.random.default_rng(2))
    static.step(obs)
    step = static.graph._step
    assert step.outputs.vision is None
    for engine in engines:
        engine.adapter.keep_vision_features = True
    try:
        a, b = eager.step(obs), static.step(obs)
        assert step.outputs.vision is not None
        assert list(a.vision_features) == list(b.vision_features)
        for cam, maps in a.vision_features.items():
            assert len(maps) == 2 and all(torch.equal(x, y) for x, y in zip(maps, b.vision_features[cam]))
            assert all(y.data_ptr() != s.data_ptr() for y, s in zip(b.vision_features[cam], step.outputs.vision[cam]))
    finally:
        for engine in engines:
            engine.adapter.keep_vision_features = False


def test_static_inputs_are_filled_in_place_and_resized_images_match_eager(engines):
    eager, static = engines
    rng = np.random.default_rng(3)
    step = GraphStep(static, capture=False)
    shapes = static.image_shapes
    big = Observation(
        images={k: rng.integers(0, 256, (2 * h, 2 * w, 3), dtype=np.uint8) for k, (h, w) in shapes.items()},
        state=rng.normal(size=6).astype(np.float32),
    )
    step.run(random_observation(static, rng))
    pointers = {k: v.data_ptr() for k, v in step.inputs.images.items()}
    step.run(big)  # another size: resized on the host as eager does, then copied into the same buffers
    assert {k: v.data_ptr() for k, v in step.inputs.images.items()} == pointers
    expected = eager.observation_to_dict(big)
    for key, buf in step.inputs.images.items():
        assert torch.equal(static.image_to_model(buf), expected[key])
    assert torch.equal(step.inputs.vectors["observation.state"], expected["observation.state"])


def test_static_inputs_refuse_what_the_eager_path_refuses(engines):
    eager, _ = engines
    obs = random_observation(eager, np.random.default_rng(4))
    missing = Observation(images={k: v for k, v in list(obs.images.items())[:1]}, state=obs.state)
    messages = []
    for engine in engines:
        with pytest.raises(InputError) as err:
            engine.step(missing)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "observation.images.wrist" in messages[0]


def test_static_inputs_are_pinned_only_for_cuda():
    cpu = StaticInputs({"cam": (4, 6)}, {"observation.state": 3}, torch.device("cpu"))
    assert not cpu.host_images["cam"].is_pinned()
    assert cpu.images["cam"].shape == (4, 6, 3) and cpu.images["cam"].dtype == torch.uint8
    cpu.load({"cam": np.full((4, 6, 3), 7, np.uint8)}, {"observation.state": np.arange(3, dtype=np.float32)})
    assert int(cpu.images["cam"].sum()) == 7 * 72 and cpu.vectors["observation.state"].tolist() == [0.0, 1.0, 2.0]


def test_cuda_graph_modes_on_the_cpu(policy_dir):
    auto = Introspector.from_pretrained(str(policy_dir))
    assert not auto.graph.active
    assert "'cpu' is not a CUDA device" in auto.graph.status.describe()
    off = Introspector.from_pretrained(str(policy_dir), IntrospectionConfig(cuda_graph="off"))
    assert not off.graph.active and "disabled" in off.graph.status.reason
    with pytest.raises(InputError, match=r"cuda_graph='on' needs a CUDA device, but the engine's device is 'cpu'"):
        Introspector.from_pretrained(str(policy_dir), IntrospectionConfig(cuda_graph="on"))
    with pytest.raises(InputError, match=r"cuda_graph='always' is not one of \['auto', 'on', 'off'\]"):
        IntrospectionConfig(cuda_graph="always")
    with pytest.raises(InputError, match="needs a CUDA device"):
        GraphStep(auto, capture=True)
