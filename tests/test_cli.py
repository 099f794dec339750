"""The `pai` console command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PAI = str(Path(sys.executable).with_name("pai"))


def test_help_lists_the_subcommands():
    out = subprocess.run([PAI, "--help"], capture_output=True, text=True, check=True).stdout
    assert "usage: pai" in out and "info" in out


def test_info_prints_the_token_layout_of_a_saved_policy(policy_dir):
    out = subprocess.run(
        [PAI, "info", "--policy-path", str(policy_dir), "--json"], capture_output=True, text=True, check=True
    ).stdout
    info = json.loads(out[out.index("{") :])
    assert info["cameras"] == {"observation.images.front": [96, 128], "observation.images.wrist": [64, 64]}
    assert info["camera_tokens"]["observation.images.front"] == [2, 3, 4]
    assert info["camera_tokens"]["observation.images.wrist"] == [14, 2, 2]
    assert info["tokens"] == 2 + 12 + 4


def test_a_missing_policy_directory_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([PAI, "info", "--policy-path", str(tmp_path / "empty")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "has no config.json" in proc.stderr and str(tmp_path / "empty") in proc.stderr
