"""label-features: labels saved over HTTP persist, survive concurrent writers and name features in the pipeline."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from pai_core.analysis.labels import LabelStore, read_labels  # noqa: E402
from tests.test_analysis import make_models  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    """The commands as users run them (in-process ``pai`` entry point): record-features, analyse-features."""
    import contextlib
    import io

    import torch

    from pai_core.cli import main

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("labels")
    policy, dataset, sae = make_models(root)
    stdout = io.StringIO()  # results go to stdout (progress to logging)
    with contextlib.redirect_stdout(stdout):
        assert (
            main(
                [
                    "record-features",
                    "--dataset-repo-id",
                    "pai/synthetic",
                    "--root",
                    str(dataset),
                    "--episodes",
                    "0-1",
                    "--policy-path",
                    str(policy),
                    "--sae-path",
                    str(sae),
                    "--output-dir",
                    str(root / "rec"),
                    "--batch-size",
                    "6",
                ]
            )
            == 0
        )
        assert (
            main(
                [
                    "analyse-features",
                    "--record-dir",
                    str(root / "rec"),
                    "--output-dir",
                    str(root / "ana"),
                    "--top-features",
                    "3",
                    "--top-frames",
                    "2",
                    "--clip-radius",
                    "2",
                    "--thumb-height",
                    "64",
                ]
            )
            == 0
        )
    assert "recorded 24 frames of 2 episodes (0 missing)" in stdout.getvalue()
    summary = json.loads((root / "ana" / "summary.json").read_text())
    assert len(summary["features"]) == 3 and summary["n_frames"] == 24
    return {
        "root": root,
        "policy": policy,
        "sae": sae,
        "ana": root / "ana",
        "summary": summary,
        "ids": [f["feature"] for f in summary["features"]],
    }


def serve(analysis_dir: Path, **kwargs):
    from gradio_client import Client

    from pai_core.analysis.label_app import build_app, launch

    app = build_app(analysis_dir, **kwargs)
    port = free_port()
    launch(app, host="127.0.0.1", port=port, block=False)
    return app, Client(f"http://127.0.0.1:{port}/", verbose=False), f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def editable(analysis):
    """An editing app whose labels are mirrored into the SAE directory (as ``--sae-path`` does)."""
    work = analysis["root"] / "ana_edit"
    shutil.copytree(analysis["ana"], work)
    app, client, url = serve(work, mirrors=[analysis["sae"] / "labels.json"])
    yield {**analysis, "work": work, "client": client, "url": url}
    app.close()


def test_a_label_saved_over_http_is_read_back_and_stored_in_labels_json(editable):
    client, f = editable["client"], editable["ids"][0]
    saved = client.predict(f, "red block", "peaks on the red block", api_name="/save_label")
    assert saved["name"] == "red block"
    assert client.predict(f, api_name="/get_label")["description"] == "peaks on the red block"
    on_disk = read_labels(editable["work"] / "labels.json")["features"][str(f)]
    assert (on_disk["name"], on_disk["description"]) == ("red block", "peaks on the red block")
    listed = {item["feature"]: item for item in client.predict(api_name="/list_features")}
    assert list(listed) == editable["ids"] and listed[f]["label"]["name"] == "red block"


def test_labels_saved_in_the_app_name_the_features_in_the_pipeline(editable):
    from pai_core.pipeline import Pipeline

    f = editable["ids"][1]
    editable["client"].predict(f, "gripper edge", "", api_name="/save_label")
    pipe = Pipeline.load(str(editable["policy"]), str(editable["sae"]))  # finds SAE/labels.json
    names = pipe.feature_names()
    assert names[f] == "gripper edge"
    assert names[editable["ids"][2]] == f"f{editable['ids'][2]}"


def test_an_empty_name_and_description_remove_a_label(editable):
    client, f = editable["client"], editable["ids"][2]
    client.predict(f, "temporary", "x", api_name="/save_label")
    assert str(f) in read_labels(editable["work"] / "labels.json")["features"]
    client.predict(f, "", "", api_name="/save_label")
    assert str(f) not in read_labels(editable["work"] / "labels.json")["features"]
    assert client.predict(f, api_name="/get_label") == {"name": "", "description": ""}


def test_concurrent_saves_over_http_from_two_threads_all_persist(editable):
    from gradio_client import Client

    errors = []

    def worker(offset: int):
        try:
            c = Client(editable["url"], verbose=False)
            for i in range(6):
                c.predict(1000 + offset + 2 * i, f"t{offset}-{i}", "", api_name="/save_label")
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert not errors
    feats = read_labels(editable["work"] / "labels.json")["features"]
    assert {str(1000 + k) for k in range(12)} <= set(feats)


def test_two_writers_on_one_file_never_lose_each_others_labels(tmp_path):
    path = tmp_path / "labels.json"
    n = 40

    def writer(offset: int):
        store = LabelStore(path)  # separate stores, as two app processes would have
        for i in range(n):
            store.save(offset + 2 * i, f"w{offset}-{i}", "d")

    threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    feats = read_labels(path)["features"]
    assert sorted(int(k) for k in feats) == list(range(2 * n))
    assert feats["3"]["name"] == "w1-1"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # temp files replaced


def test_two_processes_saving_at_once_keep_every_label(tmp_path):
    import pai_core.analysis.labels as labels_module

    path = tmp_path / "labels.json"
    # labels.py alone (as in an exported Space): the processes start fast and race for real
    code = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('labels', sys.argv[3]); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); s = m.LabelStore(sys.argv[1]); "
        "o = int(sys.argv[2]); [s.save(o + 2 * i, f'p{o}-{i}') for i in range(30)]"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(k), labels_module.__file__]) for k in (0, 1)]
    assert [p.wait(60) for p in procs] == [0, 0]
    assert sorted(int(k) for k in read_labels(path)["features"]) == list(range(60))


def test_a_read_only_app_serves_labels_but_has_no_save_endpoint(analysis):
    work = analysis["root"] / "ana_ro"
    shutil.copytree(analysis["ana"], work)
    f = analysis["ids"][0]
    LabelStore(work / "labels.json").save(f, "table edge", "")
    before = (work / "labels.json").read_text()
    app, client, _ = serve(work, read_only=True)
    try:
        endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        assert "/get_label" in endpoints and "/save_label" not in endpoints
        assert client.predict(f, api_name="/get_label")["name"] == "table edge"
        with pytest.raises(ValueError, match="Cannot find a function with `api_name`: /save_label"):
            client.predict(f, "vandal", "", api_name="/save_label")
    finally:
        app.close()
    assert (work / "labels.json").read_text() == before


def test_export_space_writes_an_app_that_runs_without_pai_core(analysis, tmp_path, capsys):
    from pai_core.cli import main

    space = tmp_path / "space"
    assert main(["label-features", "--analysis-dir", str(analysis["ana"]), "--export-space", str(space)]) == 0
    assert "gradio deploy" in capsys.readouterr().out  # the result (the folder written), on stdout
    assert "sdk: gradio" in (space / "README.md").read_text()
    assert (space / "requirements.txt").read_text().startswith("gradio==")
    assert (space / "analysis" / "summary.json").is_file()
    probe = "import sys; sys.modules['pai_core'] = None; import app; print(app.READ_ONLY, app.app.pai_browser.ids)"
    run = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=space,
        capture_output=True,
        text=True,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[-2] == f"True {analysis['ids']}"
    assert main(["label-features", "--analysis-dir", str(analysis["ana"]), "--export-space", str(space)]) == 1
    assert "not empty" in capsys.readouterr().err


def test_the_app_refuses_a_folder_that_is_not_an_analysis(tmp_path, capsys):
    from pai_core.cli import main

    assert main(["label-features", "--analysis-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "not a pai analyse-features folder" in err and str(tmp_path) in err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_page_renders_the_first_feature_in_headless_chromium(editable, tmp_path):
    import cv2

    f = int(editable["client"].predict(api_name="/list_features")[0]["feature"])
    shot = tmp_path / "page.png"
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,1000",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ]  # nothing but the local app resolves
    for budget in (15000, 30000, 60000):  # a loaded machine may need longer for the app's first render
        dom = subprocess.run(
            flags + [f"--virtual-time-budget={budget}", "--dump-dom", editable["url"]],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        if "/top_00.png" in dom:
            break
    assert f"Feature {f}" in dom  # the first feature's stats header rendered
    assert "/top_00.png" in dom and "#1 ep " in dom  # its top frames (served from the cache) are in the gallery
    subprocess.run(
        flags + [f"--virtual-time-budget={budget}", f"--screenshot={shot}", editable["url"]],
        capture_output=True,
        timeout=120,
    )
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (1000, 1400)
    assert img.std() > 10  # not a blank page
