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
    f.write_text("/**:\n  ros__parameters:\n    rate_hz: 5.0\n    device: cpu\n"
                 "pai_introspector:\n  ros__parameters:\n    rate_hz: 20\n")
    s = load_settings(f)
    assert s.rate_hz == 20.0 and s.device == "cpu"
