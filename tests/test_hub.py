"""An SAE on the hub as one unit: what an upload sends is what loading by hub id needs, and a hub SAE read
from a real hub cache layout (offline) runs exactly as its local folder, alarm and labels included."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pai_core import ModelError
from pai_core.cli import main
from pai_core.hub import locate_sae, sae_unit, upload_arguments
from pai_core.ood import score_episodes
from pai_core.pipeline import Pipeline
from pai_core.sources.dataset import open_dataset
from tests.conftest import calibrate_world_copy

REPO_ID = "pai-test/so101-sae"
UNIT = [
    "model.safetensors",
    "config.json",
    "metrics.json",
    "README.md",
    "labels.json",
    "ood_params.json",
    "ood_calibration.png",
    "ood_reference.safetensors",
]
LABELS = {"features": {"3": {"name": "gripper closing", "description": ""}, "7": {"name": "cube edge"}}}


def populate_hub_cache(cache: Path, repo_id: str, folder: Path, files: list[str]) -> str:
    """Lay ``files`` of ``folder`` out as huggingface_hub's cache does after a download: content-addressed
    blobs, a snapshot of relative links named by the commit, and ``refs/main`` naming that commit."""
    owner, name = repo_id.split("/")
    repo = cache / f"models--{owner}--{name}"
    commit = hashlib.sha1("".join(files).encode()).hexdigest()
    for rel in files:
        data = (folder / rel).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return commit


@pytest.fixture(scope="module")
def calibrated(ood_world, tmp_path_factory):
    """The OOD world's SAE calibrated with patch_knn (the demo's score, which has a reference file), with
    labels, beside files that must stay local (checkpoint, notes)."""
    sae = tmp_path_factory.mktemp("hub") / "sae"
    calibrate_world_copy(ood_world, sae, "patch_knn")
    (sae / "labels.json").write_text(json.dumps(LABELS))
    (sae / "notes.txt").write_text("local scratch")
    assert (sae / "checkpoint.pt").is_file()
    return sae


@pytest.fixture
def hub_cache(calibrated, tmp_path, monkeypatch):
    """An offline hub cache holding exactly the upload unit of ``calibrated`` under ``REPO_ID``."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    commit = populate_hub_cache(cache, REPO_ID, calibrated, sae_unit(calibrated))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache, commit


def test_the_upload_unit_is_every_file_loading_needs_and_nothing_that_stays_local(calibrated):
    from huggingface_hub.utils import filter_repo_objects

    assert sae_unit(calibrated) == UNIT
    params = json.loads((calibrated / "ood_params.json").read_text())
    assert params["score"] == "patch_knn" and params["reference"] == "ood_reference.safetensors"
    kwargs = upload_arguments(calibrated)
    on_disk = [p.relative_to(calibrated).as_posix() for p in calibrated.rglob("*") if p.is_file()]
    assert "checkpoint.pt" in on_disk and "notes.txt" in on_disk
    # huggingface_hub's own filter, as upload_folder applies allow_patterns: exactly the unit is sent
    assert sorted(filter_repo_objects(on_disk, allow_patterns=kwargs["allow_patterns"])) == sorted(UNIT)
    assert kwargs["folder_path"] == str(calibrated) and kwargs["delete_patterns"] == "*"


def test_ood_parameters_that_name_a_missing_reference_are_refused_before_any_upload(calibrated, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(calibrated, broken)
    (broken / "ood_reference.safetensors").unlink()
    with pytest.raises(ModelError, match="names the reference 'ood_reference.safetensors', which is missing"):
        sae_unit(broken)
    with pytest.raises(ModelError, match="has no model.safetensors"):
        sae_unit(tmp_path)


def test_an_sae_loaded_by_hub_id_has_its_alarm_labels_and_the_local_folders_scores(ood_world, calibrated, hub_cache):
    base, policy, _ = ood_world
    cache, commit = hub_cache
    location = locate_sae(REPO_ID)
    assert location.repo_id == REPO_ID and location.path == cache / "models--pai-test--so101-sae" / "snapshots" / commit
    local, hub = Pipeline.load(str(policy), str(calibrated)), Pipeline.load(str(policy), REPO_ID)
    assert hub.ood is not None and hub.ood.score == "patch_knn" and hub.threshold == local.threshold
    assert hub.feature_labels == local.feature_labels == {3: "gripper closing", 7: "cube edge"}
    assert hub.scorer.describe() == local.scorer.describe()
    dark = open_dataset("pai/synthetic", base / "dark")
    for pipe in (local, hub):
        pipe.eps = score_episodes(pipe, dark, batch_size=8, progress=False)
    for a, b in zip(local.eps, hub.eps):
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.alarm, b.alarm)
    assert any(e.alarm.any() for e in hub.eps)  # the dark frames raise the hub SAE's alarm


def test_replay_with_a_hub_sae_writes_the_same_tables_as_with_the_local_folder(
    ood_world, calibrated, hub_cache, tmp_path
):
    base, policy, _ = ood_world
    tables = {}
    for name, sae in (("local", str(calibrated)), ("hub", REPO_ID)):
        out = tmp_path / name
        assert (
            main(
                [
                    "replay",
                    "--dataset-repo-id",
                    "pai/synthetic",
                    "--root",
                    str(base / "dark"),
                    "--episodes",
                    "1",
                    "--policy-path",
                    str(policy),
                    "--sae-path",
                    sae,
                    "--output-dir",
                    str(out),
                    "--no-video",
                    "--no-mcap",
                    "--no-progress",
                ]
            )
            == 0
        )
        tables[name] = {t: pq.read_table(out / f"{t}.parquet").to_pandas() for t in ("ood", "features")}
    for t in ("ood", "features"):
        assert tables["hub"][t].equals(tables["local"][t]), t
    ood = tables["hub"]["ood"]
    assert ood["alarm"].any() and (ood["threshold"] > 0).all()


def test_calibrating_a_hub_sae_asks_for_an_output_folder_and_writes_a_complete_unit_there(
    ood_world, hub_cache, tmp_path, capsys, caplog
):
    base, policy, _ = ood_world
    args = [
        "calibrate-ood",
        "--sae-path",
        REPO_ID,
        "--policy-path",
        str(policy),
        "--dataset-repo-id",
        "pai/synthetic",
        "--root",
        str(base / "train"),
        "--alpha",
        "0.1",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "is a hub repo" in err and "pass --output-dir" in err
    out = tmp_path / "calibrated"
    with caplog.at_level(logging.INFO):
        code = main(args + ["--output-dir", str(out), "--upload-to-hub"])
    err = capsys.readouterr().err
    # offline: calibration completes into OUT, then publishing to the SAE's own repo id fails with the reason
    assert code == 1 and f"Could not upload {out} to hub repo {REPO_ID!r}" in err
    assert sae_unit(out) == [n for n in UNIT if n != "ood_reference.safetensors"]  # sae_recon_mse: no reference
    pipe = Pipeline.load(str(policy), str(out))
    assert pipe.ood.score == "sae_recon_mse" and pipe.feature_labels == {3: "gripper closing", 7: "cube edge"}
    snapshot = locate_sae(REPO_ID).path
    assert json.loads((snapshot / "ood_params.json").read_text())["score"] == "patch_knn"  # the cache untouched
    assert main(["push", "--sae-path", str(out), "--hub-repo-id", "pai-test/calibrated", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == sae_unit(out)


def test_a_hub_id_missing_from_the_offline_cache_is_an_error_naming_it(hub_cache, policy_dir):
    with pytest.raises(ModelError, match="'pai-test/absent' is neither a local directory nor a hub .*HF_HUB_OFFLINE"):
        Pipeline.load(str(policy_dir), "pai-test/absent")
    with pytest.raises(ModelError, match="no such directory"):
        locate_sae("./no/such/sae")


def test_train_sae_upload_says_the_ood_parameters_are_not_included(ood_world, tmp_path, capsys, caplog):
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # the upload attempt below must not reach the network
    base, _, _ = ood_world
    with caplog.at_level(logging.WARNING):
        code = main(
            [
                "train-sae",
                "--activations",
                str(base / "acts"),
                "--output-dir",
                str(tmp_path / "sae"),
                "--expansion-factor",
                "2",
                "--k",
                "4",
                "--steps",
                "3",
                "--batch-size",
                "64",
                "--upload-to-hub",
                "--hub-repo-id",
                "pai-test/early",
            ]
        )
    assert code == 1 and "Could not upload" in capsys.readouterr().err
    assert "before calibration: the hub repo gets no OOD parameters" in caplog.text and "pai push" in caplog.text
