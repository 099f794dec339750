"""The ament_python package builds with colcon as users build it, and installs what the launch file needs."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def colcon() -> str | None:
    return shutil.which("colcon", path=str(VENV_BIN)) or shutil.which("colcon")


@pytest.fixture(scope="module")
def install(tmp_path_factory):
    exe = colcon()
    if exe is None:
        pytest.skip("colcon is not installed (pip install colcon-common-extensions)")
    out = tmp_path_factory.mktemp("colcon")
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        [
            exe,
            "--log-base",
            str(out / "log"),
            "build",
            "--base-paths",
            str(ROOT / "ros2_ws" / "src"),
            "--build-base",
            str(out / "build"),
            "--install-base",
            str(out / "install"),
        ],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 package finished" in proc.stdout
    return out / "install" / "pai"


def test_colcon_builds_the_package_with_its_console_script_launch_file_and_configuration(install):
    share = install / "share" / "pai"
    assert (install / "lib" / "pai" / "introspect").is_file()
    assert (install / "share" / "ament_index" / "resource_index" / "packages" / "pai").is_file()
    assert (share / "launch" / "introspect.launch.py").is_file()
    for name in ("introspect.yaml", "fastdds_robot.xml", "fastdds_loopback.xml", "foxglove_layout.json", "pai.rviz"):
        assert (share / "config" / name).is_file(), f"{name} is not installed into share/pai/config"
    installed = yaml.safe_load((share / "config" / "introspect.yaml").read_text())
    assert "ros__parameters" in installed["/**"]


def test_the_launch_file_starts_the_installed_executable_with_the_installed_config(install):
    tree = ast.parse((ROOT / "launch" / "introspect.launch.py").read_text())
    calls = {n.func.id: n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    node = {k.arg: k.value for k in calls["Node"].keywords}
    assert ast.literal_eval(node["package"]) == "pai" and ast.literal_eval(node["executable"]) == "introspect"
    assert ast.literal_eval(node["name"]) == "pai_introspector"
    args = [
        ast.literal_eval(c.args[0])
        for c in ast.walk(tree)
        if isinstance(c, ast.Call) and getattr(c.func, "id", "") == "DeclareLaunchArgument"
    ]
    assert args == ["config", "policy_path", "sae_path", "device", "model_dtype", "namespace"]
    overrides = next(
        n.value for n in ast.walk(tree) if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "OVERRIDES"
    )
    assert ast.literal_eval(overrides) == ("policy_path", "sae_path", "device", "model_dtype")
    # the launch ends with the node, and fails when it fails: an OnProcessExit handler on the node that raises
    # (launch logs an exception raised in an event handler and exits 1) or emits Shutdown for a clean exit
    handler = calls["OnProcessExit"]
    assert {k.arg: getattr(k.value, "id", None) for k in handler.keywords} == {
        "target_action": "node",
        "on_exit": "_on_exit",
    }
    assert "check_config" in calls and "RegisterEventHandler" in calls
    on_exit = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_on_exit")
    assert [a.arg for a in on_exit.args.args] == ["event", "context"]
    check = next(n for n in ast.walk(on_exit) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "exit_error")
    assert ast.unparse(check) == "exit_error('pai_introspector', event.returncode, shutting_down=context.is_shutdown)"
    raised = [ast.unparse(n.exc) for n in ast.walk(on_exit) if isinstance(n, ast.Raise)]
    assert raised == ["LaunchError(error)"]
    returned = [ast.unparse(n.value) for n in ast.walk(on_exit) if isinstance(n, ast.Return)]
    assert returned == ["[EmitEvent(event=Shutdown(reason='pai_introspector exited'))]"]
    imports = {a.name: n.module for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert imports["OnProcessExit"] == "launch.event_handlers" and imports["Shutdown"] == "launch.events"
    assert imports["exit_error"] == imports["LaunchError"] == "pai.launch_checks"
    entry = (install / "lib" / "python3.11" / "site-packages").glob("pai-*.egg-info/entry_points.txt")
    assert "introspect = pai.introspect_node:main" in next(entry).read_text()
    assert next((install / "lib").glob("python3*/site-packages/pai/launch_checks.py")).is_file()


def launch_checks():
    """The package's launch_checks module (what the launch file imports), from the source tree."""
    sys.path.insert(0, str(ROOT / "ros2_ws" / "src" / "pai"))
    try:
        from pai import launch_checks as module
    finally:
        sys.path.pop(0)
    return module


def test_the_launch_checks_refuse_a_missing_config_and_turn_a_failed_node_into_a_failed_launch(tmp_path):
    checks = launch_checks()
    LaunchError, check_config, exit_error, overrides = (
        checks.LaunchError,
        checks.check_config,
        checks.exit_error,
        checks.overrides,
    )
    config = tmp_path / "introspect.yaml"
    config.write_text("/**: {ros__parameters: {}}\n")
    assert check_config(str(config)) == str(config)
    with pytest.raises(LaunchError, match=r"config:=.*nope.yaml: no such file"):
        check_config(str(tmp_path / "nope.yaml"))
    assert exit_error("pai_introspector", 0) is None and exit_error("pai_introspector", -2) is None
    assert exit_error("pai_introspector", 2) == "pai_introspector ended with exit code 2 (its error line is above)"
    assert exit_error("pai_introspector", -11) == "pai_introspector ended with signal 11"
    assert exit_error("pai_introspector", 1) == "pai_introspector ended with exit code 1"
    # SIGTERM is launch's own escalation while it shuts down, a failure at any other time
    assert exit_error("pai_introspector", -15, shutting_down=True) is None
    assert exit_error("pai_introspector", -15) == "pai_introspector ended with signal 15"
    assert exit_error("pai_introspector", 2, shutting_down=True) is not None
    assert overrides({"policy_path": "", "sae_path": "sae", "device": "cuda"}) == {"sae_path": "sae", "device": "cuda"}


def test_launch_and_config_have_one_home_and_a_package_built_without_them_fails_naming_them(tmp_path):
    pkg = ROOT / "ros2_ws" / "src" / "pai"
    assert not (pkg / "launch").exists() and not (pkg / "config").exists(), "no second copy (or symlink) in the package"
    outside = tmp_path / "ws" / "src" / "pai"
    shutil.copytree(pkg, outside, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "setup.py", "--name"], cwd=outside, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert (
        f"pai: no *.launch.py in {tmp_path / 'launch'}; the package installs its launch and config files"
        in proc.stderr + proc.stdout
    )


def test_the_installed_node_rejects_an_invalid_parameters_file_with_a_clear_error(install, tmp_path):
    assert os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"), "source scripts/test_env.sh (loopback-only DDS)"
    doc = yaml.safe_load((ROOT / "config" / "introspect.yaml").read_text())
    doc["/**"]["ros__parameters"]["rate_hz"] = -5.0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    site = next((install / "lib").glob("python3*/site-packages"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(install / "lib" / "pai" / "introspect"), "--ros-args", "--params-file", str(bad)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "rate_hz=-5.0 must be positive" in proc.stderr
    # what the launch file's OnProcessExit handler makes of this exit: a failed launch
    assert (
        launch_checks().exit_error("pai_introspector", proc.returncode)
        == "pai_introspector ended with exit code 2 (its error line is above)"
    )


def test_a_symlink_install_in_ros2_ws_links_the_repositorys_own_launch_and_config_files(tmp_path):
    exe = colcon()
    assert exe, "colcon is not installed (pip install colcon-common-extensions)"
    repo = tmp_path / "repo"
    for folder in ("launch", "config"):
        shutil.copytree(ROOT / folder, repo / folder)
    shutil.copytree(
        ROOT / "ros2_ws" / "src" / "pai", repo / "ros2_ws" / "src" / "pai", ignore=shutil.ignore_patterns("__pycache__")
    )
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        [exe, "build", "--symlink-install"], cwd=repo / "ros2_ws", env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    share = repo / "ros2_ws" / "install" / "pai" / "share" / "pai"
    for installed, source in (
        (share / "config" / "introspect.yaml", repo / "config" / "introspect.yaml"),
        (share / "launch" / "introspect.launch.py", repo / "launch" / "introspect.launch.py"),
    ):
        assert installed.is_symlink() and installed.resolve() == source.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"], "nothing written outside the repository"


def test_the_docker_build_commands_give_an_install_that_runs_after_build_is_removed(tmp_path, policy_dir):
    """What docker/Dockerfile runs: `colcon build` in ros2_ws, then `rm -rf build log`; the installed node must
    still start (a --symlink-install would leave dangling links here)."""
    import signal
    import time

    from tests.replay_helpers import CameraSpec, write_settings

    assert os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"), "source scripts/test_env.sh (loopback-only DDS)"
    for name in ("Dockerfile", "Dockerfile.gpu"):
        dockerfile = (ROOT / "docker" / name).read_text()
        assert "colcon build" in dockerfile and "rm -rf build log" in dockerfile, name
        assert "--symlink-install" not in dockerfile, name
    repo = tmp_path / "repo"
    for folder in ("launch", "config"):
        shutil.copytree(ROOT / folder, repo / folder)
    shutil.copytree(
        ROOT / "ros2_ws" / "src" / "pai", repo / "ros2_ws" / "src" / "pai", ignore=shutil.ignore_patterns("__pycache__")
    )
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    ws = repo / "ros2_ws"
    proc = subprocess.run([colcon(), "build"], cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shutil.rmtree(ws / "build")
    shutil.rmtree(ws / "log")
    install = ws / "install" / "pai"
    dangling = [p for p in install.rglob("*") if p.is_symlink() and not p.exists()]
    assert not dangling, dangling
    cams = [
        CameraSpec("/cam/front/image_raw", "observation.images.front", 10, "rgb8"),
        CameraSpec("/cam/wrist/image_raw", "observation.images.wrist", 10, "rgb8"),
    ]
    settings = write_settings(tmp_path / "params.yaml", cams, policy_dir)
    site = next((install / "lib").glob("python3*/site-packages"))
    run_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    node = subprocess.Popen(
        [sys.executable, str(install / "lib" / "pai" / "introspect"), "--ros-args", "--params-file", str(settings)],
        env=run_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end and node.poll() is None:
            line = node.stdout.readline()
            lines.append(line)
            if "ready:" in line:
                break
        assert any("ready:" in line for line in lines), "".join(lines)
    finally:
        node.send_signal(signal.SIGINT)  # what ros2 launch sends its nodes on ctrl-c
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(timeout=30)
    # ... and the launch file's OnProcessExit handler takes that exit as a clean end, not a failure
    shutdown_output = node.stdout.read()  # with faulthandler on, a native crash leaves every thread's stack here
    assert launch_checks().exit_error("pai_introspector", node.returncode) is None, (
        f"{node.returncode}: {shutdown_output}"
    )
