"""Unusable output folders and damaged SAE files are one clear line, not a traceback."""

from __future__ import annotations

import pytest

from pai_core.cli import main
from pai_core.testing import make_lerobot_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_lerobot_dataset(
        tmp_path_factory.mktemp("ds") / "ds", cameras={"observation.images.front": (96, 128)}, episodes=1, frames=3
    )


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from pai_core.testing import make_act_policy

    return make_act_policy(tmp_path_factory.mktemp("p") / "policy", cameras={"observation.images.front": (96, 128)})


def test_an_output_folder_that_is_a_file_or_lies_under_one_is_named(dataset, policy, tmp_path, capsys):
    a_file = tmp_path / "report.txt"
    a_file.write_text("not a folder")
    assert (
        main(
            [
                "record-activations",
                "--dataset-repo-id",
                "pai/synthetic",
                "--root",
                str(dataset.root),
                "--policy-path",
                str(policy),
                "--output-dir",
                str(a_file),
            ]
        )
        == 1
    )
    assert f"activation recording folder (--output-dir) {a_file} is a file; choose a folder" in capsys.readouterr().err
    under = a_file / "run1"
    assert (
        main(
            [
                "replay",
                "--dataset-repo-id",
                "pai/synthetic",
                "--root",
                str(dataset.root),
                "--episodes",
                "0",
                "--policy-path",
                str(policy),
                "--sae-path",
                "",
                "--output-dir",
                str(under),
                "--no-progress",
            ]
        )
        == 1
    )
    assert f"{under} lies under {a_file}, which is a file" in capsys.readouterr().err


def test_a_truncated_sae_weights_file_is_a_named_error(tmp_path):
    from pai_core import ModelError
    from pai_core.sae import SAEConfig, SparseAutoencoder, load_sae, save_sae

    save_sae(SparseAutoencoder(SAEConfig(d_in=64, expansion_factor=2, k=8)), tmp_path / "sae")
    weights = tmp_path / "sae" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ModelError, match="SAE weights .*model.safetensors are damaged"):
        load_sae(tmp_path / "sae")
