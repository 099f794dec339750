"""Every pai_core error class lives in pai_core.errors, and raise sites use the precise kind: an observation
that does not fit the policy is an ObservationError, a bad setting or flag a ConfigError / UsageError; both
stay InputErrors (and ValueErrors), so callers that catch InputError keep working."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import pai_core
from pai_core.errors import (
    BagReadError,
    ConfigError,
    InputError,
    MessageError,
    ModelError,
    ObservationError,
    PaiError,
    SettingsError,
    UsageError,
)
from tests.conftest import random_observation


def test_the_error_classes_form_one_tree_under_pai_error():
    assert issubclass(ObservationError, InputError) and issubclass(UsageError, InputError)
    assert issubclass(ConfigError, UsageError) and SettingsError is ConfigError
    assert issubclass(MessageError, ObservationError) and issubclass(BagReadError, ObservationError)
    assert issubclass(InputError, ValueError) and issubclass(InputError, PaiError)
    assert not issubclass(ObservationError, UsageError) and not issubclass(UsageError, ObservationError)
    assert not issubclass(ModelError, InputError)


def test_every_error_class_of_pai_core_is_defined_in_errors_and_old_import_paths_still_work():
    from pai_core.ros_convert import MessageError as from_ros_convert
    from pai_core.settings import SettingsError as from_settings
    from pai_core.sources.bag import BagReadError as from_bag

    assert (from_ros_convert, from_settings, from_bag) == (MessageError, SettingsError, BagReadError)
    outside = []
    for info in pkgutil.walk_packages(pai_core.__path__, "pai_core."):
        if info.name == "pai_core.errors":
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                outside.append(f"{info.name}.{name}")
    assert outside == [], outside


def test_an_observation_that_does_not_fit_the_policy_raises_an_observation_error(policy_dir):
    engine = pai_core.Introspector.from_pretrained(str(policy_dir))
    good = random_observation(engine, np.random.default_rng(0))
    with pytest.raises(ObservationError, match=r"observation.state: expected a vector of 6 values") as caught:
        engine.step(pai_core.Observation(images=good.images, state=np.zeros(5)))
    assert not isinstance(caught.value, UsageError)


def test_a_bad_setting_raises_a_config_error_and_a_bad_flag_a_usage_error():
    from pai_core.policy import parse_overrides
    from pai_core.settings import PaiSettings

    with pytest.raises(ConfigError, match=r"device='gpu' is not a torch device") as caught:
        PaiSettings(device="gpu")
    assert isinstance(caught.value, InputError) and not isinstance(caught.value, ObservationError)
    with pytest.raises(UsageError, match=r"--policy-overrides 'chunk_size': expected KEY=VALUE") as flag:
        parse_overrides(["chunk_size"])
    assert not isinstance(flag.value, (ConfigError, ObservationError))
