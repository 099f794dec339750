"""One CLI vocabulary: every command spells a concept the same way, the old spellings still work for one release
(and say which flag replaces them), episode selections accept ranges, and results go to stdout."""

from __future__ import annotations

import argparse
import json
import logging

import pytest

from pai_core.cli import build_parser, main
from pai_core.commands.args import parse_indices

# (argv with the old spelling, the old flag, the attribute it sets, the value, the flag that replaces it)
ALIASES = [
    (["replay", "--output-dir", "o", "--episode-id", "3"], "--episode-id", "episodes", [3], "--episodes"),
    (["replay", "--output-dir", "o", "--episode-id", "0", "2"], "--episode-id", "episodes", [0, 2], "--episodes"),
    (
        ["calibrate-ood", "--sae-path", "s", "--policy-path", "p", "--dataset-repo-id", "d", "--output", "f.json"],
        "--output",
        "ood_params_path",
        "f.json",
        "--ood-params-path",
    ),
    (
        ["evaluate-ood", "--sae-path", "s", "--policy-path", "p", "--id", "a", "--ood", "b", "--ood-params", "f"],
        "--ood-params",
        "ood_params_path",
        "f",
        "--ood-params-path",
    ),
    (
        ["evaluate-ood", "--sae-path", "s", "--policy-path", "p", "--id", "a", "--ood", "b", "--root", "data"],
        "--root",
        "datasets_dir",
        "data",
        "--datasets-dir",
    ),
    (["push", "--sae-path", "s", "--repo-id", "u/n"], "--repo-id", "hub_repo_id", "u/n", "--hub-repo-id"),
    (
        ["push", "--sae-path", "s", "--hub-repo-id", "u/n", "--private"],
        "--private",
        "hub_private",
        True,
        "--hub-private",
    ),
    (["sim", "record", "--output", "ds"], "--output", "output_dir", "ds", "--output-dir"),
    (["sim", "record", "--output-dir", "ds", "--episodes", "5"], "--episodes", "num_episodes", 5, "--num-episodes"),
    (
        ["sim", "record", "--output-dir", "ds", "--repo-id", "u/d"],
        "--repo-id",
        "dataset_repo_id",
        "u/d",
        "--dataset-repo-id",
    ),
    (["sim", "train-policy", "--dataset", "ds", "--output-dir", "p"], "--dataset", "root", "ds", "--root"),
    (["sim", "train-policy", "--root", "ds", "--output", "p"], "--output", "output_dir", "p", "--output-dir"),
    (
        ["sim", "evaluate-policy", "--policy-path", "p", "--episodes", "3"],
        "--episodes",
        "num_episodes",
        3,
        "--num-episodes",
    ),
    (["sim", "evaluate-policy", "--policy-path", "p", "--output", "e"], "--output", "output_dir", "e", "--output-dir"),
]


@pytest.mark.parametrize("argv,old,dest,value,new", ALIASES, ids=[" ".join(a[0]) for a in ALIASES])
def test_an_old_spelling_still_works_and_warns_once_naming_the_new_flag(argv, old, dest, value, new, caplog):
    with caplog.at_level(logging.WARNING, logger="pai"):
        args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    warnings = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert warnings == [f"{old} is deprecated and will be removed in the next release; use {new}"]


def test_the_new_spellings_parse_without_a_warning_and_help_shows_only_them(caplog, capsys):
    with caplog.at_level(logging.WARNING, logger="pai"):
        args = build_parser().parse_args(
            ["evaluate-ood", "--sae-path", "s", "--policy-path", "p", "--id", "a", "--ood", "b"]
            + ["--datasets-dir", "data", "--ood-params-path", "f", "--id-episodes", "0-2", "--model-dtype", "bfloat16"]
        )
    assert (args.datasets_dir, args.ood_params_path, args.id_episodes, args.model_dtype) == (
        "data",
        "f",
        [0, 1, 2],
        "bfloat16",
    )
    assert not caplog.records
    for command, old in (("evaluate-ood", "--ood-params "), ("calibrate-ood", "--output "), ("replay", "--episode-id")):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        assert old not in capsys.readouterr().out


@pytest.mark.parametrize(
    "command", ["replay", "calibrate-ood", "evaluate-ood", "record-features", "record-activations"]
)
def test_every_model_loading_command_takes_model_dtype_and_policy_overrides(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    flags = {s for a in sub._actions for s in a.option_strings}
    assert {"--model-dtype", "--policy-overrides", "--device", "--policy-path"} <= flags


def test_an_episode_selection_takes_ranges_commas_and_spaces():
    assert parse_indices("0,2,5-7") == [0, 2, 5, 6, 7]
    assert parse_indices(" 3 ") == [3] and parse_indices("4-4,") == [4]
    args = build_parser().parse_args(["replay", "--output-dir", "o", "--episodes", "0,2", "5-7", "9"])
    assert args.episodes == [0, 2, 5, 6, 7, 9]
    assert build_parser().parse_args(["replay", "--output-dir", "o"]).episodes is None  # default: every episode


@pytest.mark.parametrize(
    "text,named",
    [("5-x", "'5-x'"), ("7-5", "'7-5'"), ("-1", "'-1'"), ("0,two,3", "'two' (in '0,two,3')"), ("1.5", "'1.5'")],
)
def test_a_bad_episode_selection_is_an_error_that_names_the_bad_value(text, named, capsys):
    with pytest.raises(argparse.ArgumentTypeError, match="is not an index or a range"):
        parse_indices(text)
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["record-features", "--dataset-repo-id", "d", "--episodes", text])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert f"argument --episodes: {named} is not an index or a range: expected indices like 0,2,5-7" in err


def test_record_features_builds_the_policy_with_model_dtype_and_overrides_and_prints_its_result(tmp_path, capsys):
    import pyarrow.parquet as pq
    import torch

    from tests.test_analysis import make_models

    torch.set_num_threads(1)
    policy, dataset, sae = make_models(tmp_path)
    common = ["record-features", "--dataset-repo-id", "pai/synthetic", "--root", str(dataset), "--episodes", "1"]
    common += ["--policy-path", str(policy), "--sae-path", str(sae), "--batch-size", "6"]
    values = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        argv = common + ["--output-dir", str(out), "--model-dtype", dtype, "--policy-overrides", "n_action_steps=2"]
        assert main(argv) == 0
        assert capsys.readouterr().out.strip() == (
            f"recorded 12 frames of 1 episodes (0 missing), 128 features -> {out}/activations.parquet"
        )
        config = json.loads((out / "record.json").read_text())["config"]
        assert (config["model_dtype"], config["policy_overrides"]) == (dtype, {"n_action_steps": 2})
        values[dtype] = pq.read_table(out / "activations.parquet").to_pandas()
    assert len(values["bfloat16"]) == len(values["float32"]) == 12
    assert not values["bfloat16"].equals(values["float32"])  # the policy ran in bfloat16
    rc = main(common + ["--output-dir", str(tmp_path / "bad"), "--policy-overrides", "tempral_ensemble_coeff=0.01"])
    err = capsys.readouterr().err
    assert rc == 1 and "--policy-overrides tempral_ensemble_coeff: ACTConfig has no field" in err


def test_the_command_prints_its_result_alone_on_stdout_and_logs_warnings_to_stderr(tmp_path):
    """As a user's shell sees it: ``pai ... > result.json`` holds only the result."""
    import subprocess
    import sys
    from pathlib import Path

    from pai_core.sae import SAEConfig, SparseAutoencoder, save_sae

    sae = save_sae(SparseAutoencoder(SAEConfig(d_in=8, expansion_factor=2, k=2)), tmp_path / "sae")
    pai = str(Path(sys.executable).with_name("pai"))
    argv = [pai, "push", "--sae-path", str(sae), "--repo-id", "pai-test/x", "--dry-run"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)  # the whole of stdout is the JSON result
    assert result["repo_id"] == "pai-test/x" and "model.safetensors" in result["files"]
    err = proc.stderr.splitlines()
    assert "[pai] --repo-id is deprecated and will be removed in the next release; use --hub-repo-id" in err
    assert any(line.startswith("[pai] ") and "has no ood_params.json" in line for line in err)
