"""Tests that need a CUDA device. The default run (``pytest``, ``make test``, CI) deselects them: a CPU
machine would only skip them, and under CI a skip fails the run. Run them on a GPU machine by naming the
folder: ``pytest tests/gpu`` (``bench/gpu_check.sh`` does, with the GPU timings). Without CUDA they are
collected and reported as skipped, with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (tests/gpu; deselected unless that folder is named)")


def _names_this_folder(config) -> bool:
    for arg in config.invocation_params.args:
        if arg.startswith("-"):
            continue
        path = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config, items):
    mine = [item for item in items if HERE in Path(str(item.fspath)).resolve().parents]
    for item in mine:
        item.add_marker(pytest.mark.gpu)
    if mine and not _names_this_folder(config):
        config.hook.pytest_deselected(items=mine)
        gpu = {id(item) for item in mine}
        items[:] = [item for item in items if id(item) not in gpu]
