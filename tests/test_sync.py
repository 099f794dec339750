"""Combining separately arriving inputs into observations, counting what is not used."""

from __future__ import annotations

import numpy as np

from pai_core.sync import ObservationAssembler

IMG = np.zeros((4, 4, 3), np.uint8)


def test_an_observation_needs_every_camera_and_the_state():
    asm = ObservationAssembler(["cam.a", "cam.b"], needs_state=True, max_age_s=0.1)
    asm.add_image("cam.a", 1.0, IMG)
    assert asm.take() is None and asm.missing() == ["cam.b", "observation.state"]
    asm.add_image("cam.b", 1.02, IMG)
    asm.add_state(1.05, np.ones(3))
    obs = asm.take()
    assert obs is not None and obs.timestamp == 1.05 and set(obs.images) == {"cam.a", "cam.b"}
    assert asm.stats.incomplete == 1


def test_inputs_further_apart_than_max_age_are_never_combined():
    asm = ObservationAssembler(["cam.a"], needs_state=True, max_age_s=0.1)
    asm.add_image("cam.a", 1.0, IMG)
    asm.add_state(1.5, np.ones(3))
    assert asm.take() is None and asm.stats.too_far_apart == 1
    asm.add_image("cam.a", 1.55, IMG)
    assert asm.take() is not None


def test_frames_replaced_before_use_are_counted_as_superseded():
    asm = ObservationAssembler(["cam.a"], needs_state=False)
    for t in range(5):
        asm.add_image("cam.a", float(t), IMG)
    assert asm.take().timestamp == 4.0
    asm.add_image("cam.a", 5.0, IMG)  # the used frame is replaced: not a drop
    assert asm.stats.superseded["cam.a"] == 4 and asm.stats.received["cam.a"] == 6
    assert asm.unused_at_end() == {"cam.a": 1}
