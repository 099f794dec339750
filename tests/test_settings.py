"""One settings file for the node and replay."""

from __future__ import annotations

from pathlib import Path

import pytest

from pai_core.settings import PaiSettings, SettingsError, flatten, from_flat, load_settings

CONFIG = Path(__file__).resolve().parents[1] / "config" / "introspect.yaml"


def test_the_shipped_config_loads_and_declares_every_setting():
    settings = load_settings(CONFIG)
    assert settings.camera_map == {"/camera/front/image_raw": "observation.images.front"}
    assert settings.alarm.n <= settings.alarm.m
    import yaml

    block = yaml.safe_load(CONFIG.read_text())["/**"]["ros__parameters"]

    def names(tree, prefix=""):
        for k, v in tree.items():
            yield from names(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]

    assert sorted(names(block)) == sorted(flatten(PaiSettings()))


def test_flat_settings_round_trip():
    original = PaiSettings(policy_path="p", rate_hz=5.0)
    original.alarm.n = 2
    assert from_flat(flatten(original)) == original


def test_unknown_and_mistyped_settings_name_the_setting(tmp_path):
    with pytest.raises(SettingsError, match=r"Unknown settings \['alarm.nn'\]"):
        from_flat({"alarm.nn": 3})
    with pytest.raises(SettingsError, match=r"rate_hz='fast' should be a float"):
        from_flat({"rate_hz": "fast"})
    with pytest.raises(SettingsError, match=r"alarm n=6 and m=5"):
        from_flat({"alarm.n": 6})
    bad = tmp_path / "bad.yaml"
    bad.write_text("/**:\n  ros__parameters:\n    cameras:\n      topics: [a, b]\n      features: [x]\n")
    with pytest.raises(SettingsError, match=r"bad.yaml: cameras.topics \(2\) and cameras.features \(1\)"):
        load_settings(bad)
    (tmp_path / "empty.yaml").write_text("other: 1\n")
    with pytest.raises(SettingsError, match=r"has no '/\*\*: ros__parameters:'"):
        load_settings(tmp_path / "empty.yaml")


def test_a_node_specific_block_overrides_the_wildcard_block(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "/**:\n  ros__parameters:\n    rate_hz: 5.0\n    device: cpu\n"
        "pai_introspector:\n  ros__parameters:\n    rate_hz: 20\n"
    )
    s = load_settings(f)
    assert s.rate_hz == 20.0 and s.device == "cpu"


def test_a_misspelt_key_in_the_file_is_an_error_naming_it_and_the_known_settings(tmp_path):
    f = tmp_path / "typo.yaml"
    f.write_text("/**:\n  ros__parameters:\n    stale_timout_s: 5.0\n    use_sim_time: true\n")
    with pytest.raises(
        SettingsError,
        match=r"typo.yaml: Unknown settings \['stale_timout_s'\]; known settings are "
        r"\[.*'stale_timeout_s'.*\]",
    ):
        load_settings(f)
    # rclpy's own parameters may stand beside pai's settings
    f.write_text("/**:\n  ros__parameters:\n    stale_timeout_s: 5.0\n    use_sim_time: true\n")
    assert load_settings(f).stale_timeout_s == 5.0
    with pytest.raises(SettingsError, match=r"missing.yaml: no such file"):
        load_settings(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("stale_timeout_s", -1.0, "stale_timeout_s=-1.0 must be positive"),
        ("max_input_age_s", 0.0, "max_input_age_s=0.0 must be positive"),
        ("startup_grace_s", -5.0, "startup_grace_s=-5.0 must be positive"),
        ("rate_hz", float("nan"), "rate_hz=nan must be positive"),
        ("threshold", -0.1, "threshold=-0.1 must be 0 \\(calibrated\\) or a positive OOD threshold"),
        ("device", "gpu", "device='gpu' is not a torch device; expected cpu, cuda, cuda:N or mps"),
        ("joint_names", ["a", "a"], "joint_names \\['a', 'a'\\] name \\['a'\\] more than once"),
        ("safe_stop.retry_s", 0.0, "safe_stop.retry_s=0.0 must be positive"),
        ("safe_stop.backend", "estop", "safe_stop.backend='estop' is not one of"),
        ("units.ticks_per_turn", 1, "units.ticks_per_turn=1 must be at least 2"),
    ],
)
def test_impossible_values_are_refused_with_the_setting_and_the_reason(name, value, message):
    with pytest.raises(SettingsError, match=message):
        from_flat({name: value})


def test_every_setting_is_documented_for_ros_param_describe():
    import dataclasses

    from pai_core.settings import SECTIONS

    for cls in [PaiSettings, *SECTIONS.values()]:
        doc = cls.__doc__ or ""
        if cls.__name__ == "CameraSettings":
            continue  # documented by the node (parallel lists)
        missing = [
            f.name for f in dataclasses.fields(cls) if f"{f.name}:" not in doc and f.name not in SECTIONS
        ]  # sections document their fields
        assert not missing, f"{cls.__name__} lacks Args docs for {missing}"
