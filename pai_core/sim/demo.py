"""``pai demo``: the whole of pai on the SO-101 simulation, as a list of named, cached stages.

Each stage declares the files it produces; a stage whose outputs all exist is skipped, so a second
run only redoes what is missing (``--force NAME`` reruns one). Stages call the library (``sim.record``,
``sim.train``, ``sim.evaluate``, ``distributed``, ``ood.calibration``, ``ood.evaluate``, ``analysis``,
``replay.api``) with the same values the CLI would pass; none goes through the CLI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from ..configs import OodSignal
from ..errors import ObservationError, PaiError, StageSkipped
from .scene import PERTURBATIONS

if TYPE_CHECKING:
    from ..settings import PaiSettings

REPO_ID = "pai/so101_pick_cube"
# The shipped demo policy (pai_core/sim/demo_policy/README.md): trained once with `pai sim train-policy` for
# longer than the demo can afford on a CPU; `pai demo --train-policy` trains one instead. Package data
# (pyproject's package-data), found through importlib.resources in a source checkout and in an installed wheel
# alike (both put it on the file system, which LeRobot's loader needs).
# How the shipped policy was trained beyond steps and batch size (its training.json records them too);
# ``pai demo --train-policy`` trains with the same.
SHIPPED_RECIPE: dict[str, Any] = {"action_loss": "l2", "start_share": 0.5, "start_frames": 6}
SHIPPED_POLICY = Path(str(resources.files("pai_core.sim") / "demo_policy"))


PolicySource = Literal["shipped", "train"]
CalibrationSource = Literal["rollouts", "expert"]
# first cube seeds of the calibration episodes, apart from training (0..), tests (7000..) and evaluation (10000..)
CALIBRATION_SEEDS = {"rollouts": 20_000, "expert": 5000}


@dataclass
class DemoConfig:
    """Sizes of every stage. ``preset(quick=...)`` gives the two shipped sizes.

    Args:
        output_dir: everything goes here.
        train_episodes: clean expert episodes for the policy and the SAE.
        calib_episodes: clean held-out episodes for the conformal threshold (with ``calibration="rollouts"``:
            episodes the policy attempts; its successful ones are kept).
        calibration: "rollouts" calibrates on the policy's own successful closed-loop episodes (the frames
            it sees when it drives the robot: ``pai sim record --policy-path``; docs/trainer.md), "expert" on
            the expert's.
        test_episodes: clean held-out episodes for the OOD evaluation (false alarms).
        ood_episodes: episodes per perturbation.
        perturbations: perturbations recorded and evaluated.
        replay_perturbation: the perturbed episode replayed offline and through ROS.
        policy: "shipped" copies the shipped demo policy (``SHIPPED_POLICY``, made by the same recording and
            ``pai sim train-policy`` command, pai_core/sim/demo_policy/README.md); "train" trains one here.
        train_steps, batch_size: policy training with ``policy="train"``, with the shipped policy's recipe
            (L2 action loss, half of every batch from the episodes' first 6 frames; bounded by steps: the
            same command gives the same policy; 3,000 steps took 535 s on an idle 2-core CPU);
            train_minutes: an optional extra clock bound.
        eval_episodes: closed-loop episodes for the success rate.
        sae_steps: SAE optimiser steps.
        alpha: target false-alarm rate per frame.
        reference_nuisance: camera-nuisance variants of every patch_knn reference frame (JPEG, exposure,
            noise, blur; ``pai calibrate-ood --reference-nuisance``), chosen by bench/failure.py in closed loop.
        signals: further OOD signals calibrated jointly with the patch score (``--signals``).
        ros: also replay through rclpy (loopback).
    """

    output_dir: Path
    train_episodes: int = 120
    calib_episodes: int = 16
    calibration: CalibrationSource = "rollouts"
    test_episodes: int = 4
    ood_episodes: int = 3
    perturbations: list[str] = field(default_factory=lambda: [p for p in PERTURBATIONS if p != "none"])
    replay_perturbation: str = "distractor"
    policy: PolicySource = "shipped"
    train_steps: int = 3000
    train_minutes: float | None = None
    batch_size: int = 8
    eval_episodes: int = 20
    sae_steps: int = 1500
    alpha: float = 0.01
    reference_nuisance: int = 4
    signals: list[OodSignal] = field(default_factory=lambda: ["action_consistency"])
    ros: bool = True

    def __post_init__(self) -> None:
        if self.policy not in get_args(PolicySource):
            raise PaiError(f"DemoConfig.policy={self.policy!r}: expected one of {get_args(PolicySource)}")
        if self.calibration not in get_args(CalibrationSource):
            raise PaiError(
                f"DemoConfig.calibration={self.calibration!r}: expected one of {get_args(CalibrationSource)}"
            )

    @classmethod
    def preset(cls, output_dir: str | Path, quick: bool = False) -> DemoConfig:
        if not quick:
            return cls(Path(output_dir))
        return cls(
            Path(output_dir),
            policy="train",
            train_episodes=6,
            calib_episodes=3,
            calibration="expert",  # a 60-step policy rarely succeeds
            test_episodes=1,
            ood_episodes=1,
            perturbations=["lighting", "distractor", "occlusion"],
            train_steps=60,
            train_minutes=2.0,
            eval_episodes=2,
            sae_steps=300,
            alpha=0.05,
            reference_nuisance=2,
        )


@dataclass
class Stage:
    name: str
    outputs: list[Path]
    run: Callable[[], None]
    what: str = ""


def demo_settings(policy: Path, sae: Path) -> PaiSettings:
    """What ``pai replay --config config/introspect.yaml`` reads for a simulated bag, without the file: pai's
    defaults (the values config/introspect.yaml holds) with the simulator's topics and joints."""
    from ..settings import CameraSettings, PaiSettings
    from .bag import IMAGE_TOPIC, JOINT_TOPIC
    from .env import CAMERA, JOINT_NAMES

    return PaiSettings(
        policy_path=str(policy),
        sae_path=str(sae),
        cameras=CameraSettings(topics=[IMAGE_TOPIC], features=[CAMERA]),
        joint_states_topic=JOINT_TOPIC,
        joint_names=list(JOINT_NAMES),
    )


def record_episodes(
    root: Path, episodes: int, seed: int, perturbation: str, bag: Path | None, policy: Path | None = None
) -> None:
    from .env import SimConfig
    from .record import RecordConfig, record

    who = f"policy {policy}" if policy else "expert"
    print(f"[pai demo] sim record: {episodes} {who} episodes, scene {perturbation} -> {root}", flush=True)
    summary = record(
        RecordConfig(
            root,
            REPO_ID,
            episodes,
            seed,
            bag_path=bag,
            sim=SimConfig(perturbation=perturbation),
            policy_path=str(policy or ""),
        )
    )
    print(f"[pai demo] kept {len(summary['episodes'])} episodes, {summary['frames']} frames", flush=True)


def calibration_root(cfg: DemoConfig) -> Path:
    """The calibration dataset's folder (one name per source, so a cached one is never the other kind)."""
    return cfg.output_dir / "datasets" / ("calibration_rollouts" if cfg.calibration == "rollouts" else "calibration")


def train_demo_policy(cfg: DemoConfig, train_root: Path | None = None) -> None:
    """``pai sim train-policy`` with the shipped recipe on ``train_root`` (default: the demo's training
    episodes) -> ``cfg.output_dir/policy``."""
    from .train import TrainConfig, train_policy

    out = cfg.output_dir
    print(f"[pai demo] sim train-policy: {cfg.train_steps} steps -> {out / 'policy'}", flush=True)
    train_policy(
        TrainConfig(
            train_root or out / "datasets" / "train",
            out / "policy",
            REPO_ID,
            cfg.train_steps,
            cfg.train_minutes or None,
            cfg.batch_size,
            **SHIPPED_RECIPE,
        )
    )


def _evaluate_policy(cfg: DemoConfig) -> None:
    from .evaluate import EvalConfig, evaluate_policy

    out = cfg.output_dir / "policy"
    summary = evaluate_policy(
        EvalConfig(str(out / "pretrained_model"), cfg.eval_episodes, output_dir=str(out / "eval"))
    )
    print(f"[pai demo] closed-loop success rate {summary['success_rate']:.0%}", flush=True)


def _replay(bag: Path, policy: Path, sae: Path, output_dir: Path) -> None:
    """``pai replay --bag``: the pipeline from the settings, every output (videos, Parquet, MCAP, report)."""
    from ..pipeline import Pipeline
    from ..replay.api import ReplayOptions, replay_bag

    settings = demo_settings(policy, sae)
    print(f"[pai demo] replay {bag} -> {output_dir}", flush=True)
    result = replay_bag(
        bag, settings, Pipeline.from_settings(settings), ReplayOptions(output_dir, overlay=settings.overlay)
    )
    acc = result.accounting
    if acc.frames_processed == 0:
        raise ObservationError(f"replayed no frame of {acc.frames_total} of {bag}: {acc.skip_summary()}")


def build_stages(cfg: DemoConfig) -> list[Stage]:
    out = cfg.output_dir
    ds = out / "datasets"
    policy = out / "policy" / "pretrained_model"
    sae = out / "sae"
    bags = out / "bags"
    stages: list[Stage] = []

    def rec(
        name: str,
        root: Path,
        episodes: int,
        seed: int,
        perturbation: str = "none",
        bag: Path | None = None,
        policy: Path | None = None,
    ) -> None:
        stages.append(
            Stage(
                name,
                [root / "pai_sim.json"] + ([bag / "metadata.yaml"] if bag else []),
                lambda: record_episodes(root, episodes, seed, perturbation, bag, policy),
                f"{'the policy driving, successful' if policy else 'expert'} episodes, scene {perturbation}",
            )
        )

    rec("record_train", ds / "train", cfg.train_episodes, 0)
    rec("record_test_clean", ds / "test_clean", cfg.test_episodes, 7000, bag=bags / "clean")
    # the replayed perturbation is recorded (with its bag) even when it is not among the evaluated ones
    for p in dict.fromkeys([*cfg.perturbations, cfg.replay_perturbation]):
        rec(
            f"record_{p}",
            ds / f"ood_{p}",
            cfg.ood_episodes,
            7000,
            perturbation=p,
            bag=bags / p if p == cfg.replay_perturbation else None,
        )
    if cfg.policy == "shipped":
        stages.append(
            Stage(
                "train_policy",
                [policy / "model.safetensors"],
                lambda: _copy_shipped_policy(out / "policy"),
                f"the shipped demo policy ({SHIPPED_POLICY})",
            )
        )
    else:
        stages.append(
            Stage(
                "train_policy",
                [policy / "model.safetensors"],
                lambda: train_demo_policy(cfg),
                "small ACT on the clean episodes",
            )
        )
    stages.append(
        Stage(
            "evaluate_policy",
            [out / "policy" / "eval" / "evaluation.json"],
            lambda: _evaluate_policy(cfg),
            "closed-loop success rate",
        )
    )
    rec(  # after the policy: rollouts need it
        "record_calibration",
        calibration_root(cfg),
        cfg.calib_episodes,
        CALIBRATION_SEEDS[cfg.calibration],
        policy=policy if cfg.calibration == "rollouts" else None,
    )
    stages.append(
        Stage(
            "train_sae",
            [sae / "model.safetensors"],
            lambda: train_demo_sae(policy, ds / "train", sae, cfg.sae_steps),
            "activations + TopK SAE",
        )
    )
    stages.append(
        Stage(
            "calibrate_ood",
            [sae / "ood_params.json"],
            lambda: _calibrate_ood(cfg),
            f"conformal threshold on held-out clean {cfg.calibration} episodes (patch_knn + action consistency, "
            "docs/demo.md)",
        )
    )
    stages.append(
        Stage(
            "evaluate_ood",
            [out / "ood_eval" / "ood_evaluation.json"],
            lambda: _evaluate_ood(cfg),
            "AUROC, false alarms, detection delay per perturbation",
        )
    )
    stages.append(
        Stage(
            "features",
            [out / "features" / "analysis" / "index.html"],
            lambda: _features(cfg),
            "SAE feature analysis (top frames, maps, clips)",
        )
    )

    def replay(kind: str) -> Callable[[], None]:
        return lambda: _replay(bags / kind, policy, sae, out / "replay" / kind)

    for kind in ("clean", cfg.replay_perturbation):
        stages.append(
            Stage(
                f"replay_{kind}",
                [out / "replay" / kind / "report.html"],
                replay(kind),
                f"offline replay of the {kind} bag",
            )
        )
    if cfg.ros:
        ros_outputs = [out / "replay_ros" / k / "summary.json" for k in ("clean", cfg.replay_perturbation)]
        stages.append(
            Stage(
                "replay_ros",
                ros_outputs,
                lambda: _replay_ros(cfg),
                "both bags through the live ROS node (rclpy, loopback DDS)",
            )
        )
    return stages


def _copy_shipped_policy(dest: Path) -> None:
    """The shipped policy's folder (pretrained_model/, training.json, training_loss.png) into ``dest``."""
    import shutil

    if not (SHIPPED_POLICY / "pretrained_model" / "model.safetensors").is_file():
        raise PaiError(f"The shipped demo policy is missing from {SHIPPED_POLICY}; train one with --train-policy")
    print(f"[pai demo] using the shipped demo policy {SHIPPED_POLICY} (pai_core/sim/demo_policy/README.md)", flush=True)
    shutil.copytree(SHIPPED_POLICY, dest, dirs_exist_ok=True)


def _replay_ros(cfg: DemoConfig) -> None:
    """Start ``pai_introspector`` as a process, play the clean and the perturbed bag into it with
    ``bag_replay`` and compare its answers with the offline replay (``pai_core.sim.ros_replay``)."""
    from .bag import IMAGE_TOPIC, JOINT_TOPIC
    from .env import CAMERA, JOINT_NAMES
    from .ros_replay import RosReplayConfig, rclpy_available, replay_through_node, write_node_params

    why = rclpy_available()
    if why:
        print(f"[pai demo] replay_ros skipped: {why}", flush=True)
        raise StageSkipped(why)
    out = cfg.output_dir
    # no safe-stop service in the simulation; a patient watchdog, as frames wait for the node's answers
    params = write_node_params(
        out / "replay_ros" / "introspect.yaml",
        out / "policy" / "pretrained_model",
        out / "sae",
        cameras={IMAGE_TOPIC: CAMERA},
        joint_names=JOINT_NAMES,
        joint_states_topic=JOINT_TOPIC,
        stale_timeout_s=60.0,
        safe_stop={"service": ""},
    )
    for kind in ("clean", cfg.replay_perturbation):
        offline = out / "replay" / kind
        summary = replay_through_node(
            RosReplayConfig(
                out / "bags" / kind,
                params,
                out / "replay_ros" / kind,
                offline_dir=offline if (offline / "ood.parquet").is_file() else None,
            )
        )
        diff = summary["max_abs_score_diff_vs_offline"]
        print(
            f"[pai demo] ROS node, {kind} bag: {summary['frames_answered']} of {summary['frames_published']} frames "
            f"answered, alarm on {summary['alarm_frames']} frames"
            + (f", max |score - offline| {diff:.1e}" if diff is not None else "")
            + f"; {out / 'replay_ros' / kind}",
            flush=True,
        )


def train_demo_sae(policy: Path, train_root: Path, sae: Path, steps: int) -> None:
    """``pai train-sae --dataset-repo-id ... --expansion-factor 8 --k 16 --aux-k 64 --batch-size 1024``: record
    the policy's tokens on the clean training episodes, then train the SAE on them."""
    from ..activations import ActivationStore, open_datasets, record_activations
    from ..distributed import train_on_recording
    from ..sae.train import TrainConfig

    acts = sae / "activations"
    record_activations(open_datasets(REPO_ID, str(train_root)), str(policy), acts)
    layer = int(ActivationStore(acts).manifest["layer"])
    config = TrainConfig(expansion_factor=8, k=16, aux_k=64, steps=steps, batch_size=1024, layer=layer)
    train_on_recording(acts, sae, config)


def _calibrate_ood(cfg: DemoConfig) -> None:
    from ..ood.calibration import CalibrationJob, calibrate_ood

    out = cfg.output_dir
    job = CalibrationJob(
        out / "sae",
        out / "policy" / "pretrained_model",
        REPO_ID,
        calibration_root(cfg),
        out / "sae" / "ood_params.json",
        alpha=cfg.alpha,
        score="patch_knn",
        signals=cfg.signals,
        reference_nuisance=cfg.reference_nuisance,
    )
    print(f"[pai demo] calibrate-ood: {json.dumps(calibrate_ood(job))}", flush=True)


def _evaluate_ood(cfg: DemoConfig) -> None:
    from ..ood.evaluate import EvaluationJob, evaluate_ood

    out = cfg.output_dir
    job = EvaluationJob(
        out / "sae",
        out / "policy" / "pretrained_model",
        [out / "datasets" / "test_clean"],
        [out / "datasets" / f"ood_{p}" for p in cfg.perturbations],
        out / "ood_eval",
    )
    print(f"[pai demo] evaluate-ood: {json.dumps(evaluate_ood(job))}", flush=True)


def _features(cfg: DemoConfig) -> None:
    """``pai record-features`` then ``pai analyse-features`` on the clean test episodes."""
    from ..analysis.analyse import AnalyseConfig, analyse_features
    from ..analysis.record import RecordConfig, record_features

    out = cfg.output_dir
    record_dir, analysis_dir = out / "features" / "record", out / "features" / "analysis"
    print(f"[pai demo] record-features -> {record_dir}", flush=True)
    meta = record_features(
        RecordConfig(
            dataset_repo_id=REPO_ID,
            root=str(out / "datasets" / "test_clean"),
            policy_path=str(out / "policy" / "pretrained_model"),
            sae_path=str(out / "sae"),
            output_dir=str(record_dir),
        )
    )
    if meta["frames_missing"]:
        raise ObservationError(f"record-features: {meta['frames_missing']} frames missing from {record_dir}")
    print(f"[pai demo] analyse-features -> {analysis_dir}", flush=True)
    analyse_features(AnalyseConfig(record_dir=str(record_dir), output_dir=str(analysis_dir)))


def run_demo(cfg: DemoConfig, force: list[str] | None = None, only: list[str] | None = None) -> str:
    """Run the stages (skipping cached ones) and return the text report (also ``report.md``)."""
    stages = build_stages(cfg)
    names = [s.name for s in stages]
    for n in (force or []) + (only or []):
        if n not in names:
            raise PaiError(f"Unknown demo stage {n!r}; stages are {names}")
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    for i, stage in enumerate(stages, 1):
        if only and stage.name not in only:
            continue
        cached = all(p.exists() for p in stage.outputs) and stage.name not in (force or [])
        print(f"[pai demo] stage {i}/{len(stages)} {stage.name}: {'cached' if cached else stage.what}", flush=True)
        entry = {"stage": stage.name, "status": "cached", "seconds": 0.0}
        if not cached:
            start = time.perf_counter()
            try:
                stage.run()
                entry["status"] = "done"
            except StageSkipped as exc:
                entry["status"] = f"skipped: {exc}"
            except Exception as exc:  # keep going: the report says which stage failed and why
                entry["status"] = f"failed: {type(exc).__name__}: {exc}"
                print(f"[pai demo] stage {stage.name} failed: {exc}", flush=True)
            entry["seconds"] = round(time.perf_counter() - start, 1)
        log.append(entry)
    (cfg.output_dir / "stages.json").write_text(json.dumps(log, indent=2))
    from .report import write_demo_report

    return write_demo_report(cfg, log)
