#!/usr/bin/env python
"""Closed-loop failure benchmark: the policy drives the SO-101 simulation and pai watches, episode by episode.

Open-loop benchmarks (bench/ood.py) ask whether perturbed frames score higher than clean ones. A robot
needs something else: an alarm that stays quiet while the policy succeeds under the camera nuisance it
tolerates, and rises before an episode that is going wrong is lost. Here the alarm runs exactly as the
node runs it: ``Pipeline.step(obs)`` per control tick (one ACT forward; the action the simulator executes
is that forward's ``frame.result.action``), the Pipeline's own AlarmPolicy, ``pipeline.reset()`` per
episode. The alarm is watched, not obeyed: episodes run to their end, so each has an outcome.

Conditions (``--conditions``; episode i of every condition places the cube with seed SEED + i):
  clean                         the training scene
  lighting ... occlusion        the named scene perturbations (pai_core/sim/scene.py)
  jpeg90/75/50, exposure0.85/0.95/1.05/1.15, noise3, blur0.7
                                camera nuisance on every frame both the policy and pai see
  frame_repeat                  every other frame is the previous image again (fresh state and stamp)
  frame_skip                    every other frame never arrives: no forward, the robot holds its pose
  push, slip, appear            disturbances (pai_core/sim/disturb.py): the cube pushed away, the cube
                                slipping out of the gripper after the grasp, a box appearing by the cube

Detectors, each with the same n-of-m latched alarm: pai (the Pipeline's alarm: any signal above its
jointly calibrated threshold), each of pai's signals alone (appearance score; action_consistency when
ood_params.json lists it), and the seed's rule (whole-frame SAE, mean + 2.5 sigma; bench/baselines.py
trained as bench/ood.py trains it) on the encoder tokens of the same forward. Per step the alarm
statistic is score / threshold (pai: the largest over its signals).

Definitions (docs/failure_bench.md): onset = the first step whose frame shows the cause (the disturbance
step; 0 for scene and camera conditions); lost = the last step of a failed episode. A false stop is a
successful episode in which the alarm rose; a failure is caught when its alarm rose within [onset, lost];
an alarm before the onset is premature. Episode statistic (ROC-AUC, positives = failed episodes): the
highest alarm statistic within [onset, lost] (successes: over the whole episode). Lead time: lost - alarm.

Sides and ratios: every detector scores the same control tick of the same episode (the seed's rule reads the
encoder tokens of pai's forward), so the sides are paired step by step, not timed apart. This is a detection
benchmark, so no timing ratio: the comparison is printed per detector (false stops, catches, ROC-AUC,
median lead time) side by side with the seed's rule. A ratio of bounded rates such as ROC-AUC would hide
that 0.5 is chance; the inference cost against plain LeRobot is bench/overhead.py's.

    python bench/failure.py --quick                      # reuse outputs/demo (make demo) policy and SAE
    python bench/failure.py --episodes 20 --conditions clean jpeg50 push slip
    python bench/failure.py --policy-path P --sae-path S --output-dir outputs/failure_bench
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, NamedTuple, get_args

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pai_core.commands import args as flags  # noqa: E402
from pai_core.errors import InputError, PaiError  # noqa: E402
from pai_core.nuisance import Nuisance  # noqa: E402
from pai_core.sim.disturb import DISTURBANCES, Disturbance  # noqa: E402
from pai_core.sim.scene import PERTURBATIONS  # noqa: E402

FALSE_STOP_TARGET = 0.05  # of successful episodes, in every clean and nuisance condition
CATCH_TARGET = 0.90  # of failing episodes, pooled
AUROC_TARGET = 0.95  # pooled, per episode

Kind = Literal["clean", "perturbation", "nuisance", "disturbance"]
Frames = Literal["every", "repeat", "skip"]
KINDS: tuple[str, ...] = get_args(Kind)
FRAMES: tuple[str, ...] = get_args(Frames)
PAI, SEED_RULE = "pai", "seed"


# ------------------------------------------------------------------------------------------ conditions
@dataclass(frozen=True)
class Condition:
    """One way of running episodes.

    Args:
        name: table row and ``--conditions`` name.
        kind: clean, perturbation (scene changed from the start), nuisance (camera; the false-stop target
            applies) or disturbance (the episode changes mid-way).
        what: one line for the table's legend.
        perturbation: the scene (``scene.PERTURBATIONS``).
        nuisance: camera condition applied to every frame the policy and pai see, or None.
        frames: "every" frame, every other frame a "repeat" of the previous image, or every other "skip"ped.
        disturbance: what happens mid-episode, or None.
    """

    name: str
    kind: Kind
    what: str
    perturbation: str = "none"
    nuisance: Nuisance | None = None
    frames: Frames = "every"
    disturbance: Disturbance | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"condition {self.name!r}: kind={self.kind!r} is not one of {list(KINDS)}")
        if self.frames not in FRAMES:
            raise ValueError(f"condition {self.name!r}: frames={self.frames!r} is not one of {list(FRAMES)}")
        if self.perturbation not in PERTURBATIONS:
            raise ValueError(f"condition {self.name!r}: unknown perturbation {self.perturbation!r}")

    @property
    def scene(self) -> str:
        """Which simulator the condition needs (one is built per scene and reused)."""
        if self.disturbance is not None and self.disturbance.needs_intruder:
            return "intruder"
        return self.perturbation


def build_conditions(disturb_step: int = -1) -> dict[str, Condition]:
    """Every condition, in table order; ``disturb_step`` (-1: each kind's default) moves push and appear."""
    out = [Condition("clean", "clean", PERTURBATIONS["none"])]
    out += [Condition(p, "perturbation", PERTURBATIONS[p], perturbation=p) for p in PERTURBATIONS if p != "none"]
    out += [
        Condition(f"jpeg{q}", "nuisance", f"JPEG quality {q}", nuisance=Nuisance(jpeg_quality=q)) for q in (90, 75, 50)
    ]
    out += [
        Condition(f"exposure{g:g}", "nuisance", f"exposure x{g:g}", nuisance=Nuisance(gain=g))
        for g in (0.85, 0.95, 1.05, 1.15)
    ]
    out += [
        Condition("noise3", "nuisance", "Gaussian sensor noise, sigma 3 grey levels", nuisance=Nuisance(noise_sigma=3)),
        Condition("blur0.7", "nuisance", "Gaussian blur, sigma 0.7 px", nuisance=Nuisance(blur_sigma=0.7)),
        Condition("frame_repeat", "nuisance", "every other frame: the previous image again", frames="repeat"),
        Condition("frame_skip", "nuisance", "every other frame lost (no forward; the robot holds)", frames="skip"),
    ]
    for kind, what in DISTURBANCES.items():
        step = disturb_step if kind != "slip" else -1
        out.append(Condition(kind, "disturbance", what, disturbance=Disturbance(kind, step=step)))
    return {c.name: c for c in out}


CONDITION_NAMES: list[str] = list(build_conditions())


# ------------------------------------------------------------------------------------------ config
@dataclass
class FailureBenchConfig:
    """Args:
    policy_path: LeRobot pretrained_model folder (the sim's front camera, six joints, 4 actions).
    sae_path: SAE folder with ``ood_params.json`` (the alarm's thresholds).
    ood_params: another ``ood_params.json`` ("" for SAE_PATH/ood_params.json).
    conditions: names from ``CONDITION_NAMES``.
    episodes: episodes per condition.
    seed: episode i uses cube seed ``seed + i`` in every condition (paired across conditions).
    max_steps: control steps after which an episode has failed; frame_skip with "hold" gets twice as many,
        so the policy sees as many frames as in clean (a robot that holds on lost frames is slower, not lost).
    disturb_step: step of push and appear (-1: ``disturb.DEFAULT_STEPS``); slip waits for the grasp.
    skipped_frame: what the robot does on a frame_skip tick without a frame: "hold" (no new command: the
        controller keeps its last joint targets and gripper command, ``PickCubeSim.hold``) or "repeat" the
        last action.
    baseline: "seed" to train and run the seed's rule beside pai, "none" to leave it out.
    baseline_steps, baseline_l1, baseline_features, sigma: the seed's whole-frame SAE (``baselines.py``).
    train_root: clean dataset for the baseline's training tokens ("" : the SAE's activation recording).
    alarm_n, alarm_m: the n-of-m alarm (latched), as the node runs it.
    device: torch device of the policy and SAE.
    batch_size: frames per forward when training tokens go through the pipeline.
    workers: processes that run the conditions (each loads the pipeline once and runs whole conditions
        with one torch thread; the seed's rule is trained once and shared). 1: this process.
    """

    policy_path: str
    sae_path: str
    ood_params: str = ""
    conditions: list[str] = field(default_factory=lambda: list(CONDITION_NAMES))
    episodes: int = 10
    seed: int = 10_000
    max_steps: int = 90
    disturb_step: int = -1
    skipped_frame: Literal["hold", "repeat"] = "hold"
    baseline: Literal["seed", "none"] = "seed"
    baseline_steps: int = 2000
    baseline_l1: float = 1e-3
    baseline_features: int = 0
    sigma: float = 2.5
    train_root: str = ""
    alarm_n: int = 3
    alarm_m: int = 5
    device: str = "cpu"
    batch_size: int = 16
    workers: int = 1

    def __post_init__(self) -> None:
        unknown = [c for c in self.conditions if c not in CONDITION_NAMES]
        if unknown or not self.conditions:
            raise InputError(f"conditions {unknown or '[]'}: expected some of {CONDITION_NAMES}")
        if self.skipped_frame not in ("hold", "repeat"):
            raise InputError(f"skipped_frame={self.skipped_frame!r} is not one of 'hold', 'repeat'")
        if self.baseline not in ("seed", "none"):
            raise InputError(f"baseline={self.baseline!r} is not one of 'seed', 'none'")
        for name in ("episodes", "max_steps", "baseline_steps", "batch_size", "workers"):
            if getattr(self, name) < 1:
                raise InputError(f"{name}={getattr(self, name)} must be >= 1")
        if self.disturb_step < -1:
            raise InputError(f"disturb_step={self.disturb_step} must be >= 0 (or -1 for the defaults)")
        from pai_core.alarm import AlarmConfig

        AlarmConfig(n=self.alarm_n, m=self.alarm_m)  # 1 <= n <= m


# ------------------------------------------------------------------------------------------ records
@dataclass
class Trace:
    """One detector over one episode: its statistic per frame seen and the step its alarm first rose."""

    stats: list[float] = field(default_factory=list)
    alarm_step: int | None = None


@dataclass
class EpisodeRecord:
    """One episode under one condition.

    Args:
        steps: control steps run (the last one is ``steps - 1``).
        onset_step: first step whose frame shows the cause (the disturbance step; 0 otherwise).
        lost_step: failed episodes: the step they are lost (the last step); None for successes.
        frame_steps: the step of each frame pai saw (frame_skip sees every other one).
        detectors: detector -> its trace (``pai``, each signal alone, ``seed``).
        alarm_signal: the signal above its threshold by the most when pai's alarm rose (what it names).
        alarm_reason: pai's alarm reason at that step.
        disturbance: what the disturbance did (None when none was applied).
    """

    condition: str
    kind: str
    seed: int
    success: bool
    steps: int
    onset_step: int
    lost_step: int | None
    frame_steps: list[int]
    detectors: dict[str, Trace]
    alarm_signal: str | None = None
    alarm_reason: str = ""
    disturbance: dict | None = None

    @property
    def alarm_step(self) -> int | None:
        """pai's first alarm step (the node's alarm)."""
        return self.detectors[PAI].alarm_step if PAI in self.detectors else None

    def to_dict(self) -> dict:
        out = asdict(self)
        for tr in out["detectors"].values():
            tr["stats"] = [float(f"{s:.4g}") if math.isfinite(s) else str(s) for s in tr["stats"]]
        return out


# ------------------------------------------------------------------------------------------ metrics
class Rate(NamedTuple):
    """k of n episodes."""

    k: int
    n: int

    @property
    def rate(self) -> float | None:
        return self.k / self.n if self.n else None

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """Wilson score interval (95 % by default): honest at 0 of n, unlike the normal approximation."""
        if not self.n:
            return 0.0, 1.0
        p, n = self.k / self.n, self.n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
        return max(0.0, centre - half), min(1.0, centre + half)

    @property
    def plus_minus(self) -> float:
        """Half the width of the 95 % interval: 'with n episodes the rate is known to +- this'."""
        lo, hi = self.interval()
        return (hi - lo) / 2

    def text(self) -> str:
        return f"{self.k}/{self.n}" + (f" {100 * self.k / self.n:.0f}%" if self.n else "")


def window(record: EpisodeRecord) -> tuple[int, int]:
    """Steps whose frames count for an episode: [onset, lost] for failures, the whole episode otherwise."""
    if record.success:
        return 0, record.steps - 1
    return record.onset_step, record.lost_step if record.lost_step is not None else record.steps - 1


def episode_statistic(record: EpisodeRecord, detector: str) -> float:
    """Highest alarm statistic within the episode's window (0 when no frame falls in it)."""
    lo, hi = window(record)
    stats = [s for t, s in zip(record.frame_steps, record.detectors[detector].stats) if lo <= t <= hi]
    return float(max(stats)) if stats else 0.0


def false_stops(records: Sequence[EpisodeRecord], detector: str) -> Rate:
    """Successful episodes in which the alarm rose (a stop the robot did not need)."""
    ok = [r for r in records if r.success]
    return Rate(sum(r.detectors[detector].alarm_step is not None for r in ok), len(ok))


def caught(records: Sequence[EpisodeRecord], detector: str) -> Rate:
    """Failed episodes whose alarm rose within [onset, lost]."""
    failed = [r for r in records if not r.success]
    hits = 0
    for r in failed:
        step, (lo, hi) = r.detectors[detector].alarm_step, window(r)
        hits += step is not None and lo <= step <= hi
    return Rate(hits, len(failed))


def premature(records: Sequence[EpisodeRecord], detector: str) -> Rate:
    """Failed episodes whose alarm rose before the cause was visible (a disturbance's onset)."""
    failed = [r for r in records if not r.success]
    return Rate(
        sum(
            r.detectors[detector].alarm_step is not None and r.detectors[detector].alarm_step < r.onset_step
            for r in failed
        ),
        len(failed),
    )


def failure_auroc(records: Sequence[EpisodeRecord], detector: str) -> float | None:
    """Per-episode ROC-AUC of the episode statistic, failed (positive) against successful episodes; None
    without both."""
    from pai_core.ood import auroc

    pos = [episode_statistic(r, detector) for r in records if not r.success]
    neg = [episode_statistic(r, detector) for r in records if r.success]
    if not pos or not neg:
        return None
    return auroc(np.nan_to_num(neg, posinf=1e300), np.nan_to_num(pos, posinf=1e300))


def lead_times(records: Sequence[EpisodeRecord], detector: str) -> list[int]:
    """Steps from the alarm to the lost step, over caught failures."""
    out = []
    for r in records:
        step = r.detectors[detector].alarm_step
        if not r.success and step is not None:
            lo, hi = window(r)
            if lo <= step <= hi:
                out.append(hi - step)
    return out


def onset_delays(records: Sequence[EpisodeRecord], detector: str) -> list[int]:
    """Steps from the onset to the alarm, over caught failures (how fast a disturbance is noticed)."""
    return [
        r.detectors[detector].alarm_step - r.onset_step
        for r in records
        if not r.success
        and r.detectors[detector].alarm_step is not None
        and window(r)[0] <= r.detectors[detector].alarm_step <= window(r)[1]
    ]


def frames_above(records: Sequence[EpisodeRecord], detector: str) -> Rate:
    """Frames whose statistic is above the threshold (score / threshold > 1; pai: any signal), over the
    given successful episodes: in clean ones, the per-frame false-alarm rate to hold against alpha (a failed
    episode's frames may rightly be unfamiliar: the policy wanders where no recording went)."""
    stats = [s for r in records if r.success for s in r.detectors[detector].stats]
    return Rate(sum(s > 1.0 for s in stats), len(stats))


def median(values: list[int]) -> float | None:
    return float(np.median(values)) if values else None


def detector_metrics(records: Sequence[EpisodeRecord], detector: str) -> dict:
    """Every metric of one detector over some episodes."""
    fs, ca, pre = false_stops(records, detector), caught(records, detector), premature(records, detector)
    leads, delays = lead_times(records, detector), onset_delays(records, detector)
    auc = failure_auroc(records, detector)
    return {
        "false_stops": fs.k,
        "successful_episodes": fs.n,
        "false_stop_rate": fs.rate,
        "false_stop_interval95": fs.interval(),
        "caught": ca.k,
        "failed_episodes": ca.n,
        "catch_rate": ca.rate,
        "catch_interval95": ca.interval(),
        "premature_alarms": pre.k,
        "auroc": auc,
        "lead_time_median": median(leads),
        "lead_times": leads,
        "onset_delay_median": median(delays),
    }


def fired_signals(records: Sequence[EpisodeRecord]) -> dict[str, int]:
    """Which signal pai's alarm named, counted over the episodes in which it rose."""
    out: dict[str, int] = {}
    for r in records:
        if r.alarm_signal:
            out[r.alarm_signal] = out.get(r.alarm_signal, 0) + 1
    return out


def targets(
    records: Sequence[EpisodeRecord], kinds: dict[str, str], detector: str = PAI, alpha: float | None = None
) -> dict:
    """The issue's targets for one detector, with the counts behind each (the per-frame one needs alpha)."""
    nuisance = [c for c, k in kinds.items() if k in ("clean", "nuisance")]
    per = {c: false_stops([r for r in records if r.condition == c], detector) for c in nuisance}
    tested = {c: r for c, r in per.items() if r.n}
    fs_met = bool(tested) and len(tested) == len(per) and all(r.rate <= FALSE_STOP_TARGET for r in tested.values())
    ca = caught(records, detector)
    auc = failure_auroc(records, detector)
    # a named scene perturbation is novelty the alarm is meant to raise even when the policy copes, so its
    # successful episodes are alarmed by design; this AUROC leaves those conditions out (reported beside)
    own_scene = [r for r in records if r.kind != "perturbation"]
    return {
        "false_stops": {
            "target": FALSE_STOP_TARGET,
            "met": fs_met,
            "per_condition": {
                c: {"k": r.k, "n": r.n, "rate": r.rate, "plus_minus": r.plus_minus} for c, r in per.items()
            },
            "untested": [c for c, r in per.items() if not r.n],
            "missed": [c for c, r in tested.items() if r.rate > FALSE_STOP_TARGET],
        },
        "catch": {
            "target": CATCH_TARGET,
            "met": ca.n > 0 and ca.rate >= CATCH_TARGET,
            "k": ca.k,
            "n": ca.n,
            "rate": ca.rate,
            "plus_minus": ca.plus_minus,
        },
        "auroc": {
            "target": AUROC_TARGET,
            "met": auc is not None and auc >= AUROC_TARGET,
            "value": auc,
            "failed": sum(not r.success for r in records),
            "successful": sum(r.success for r in records),
            "training_scene": {
                "value": failure_auroc(own_scene, detector),
                "failed": sum(not r.success for r in own_scene),
                "successful": sum(r.success for r in own_scene),
            },
        },
        "clean_frames": _clean_frames_target(records, detector, alpha),
    }


def _clean_frames_target(records: Sequence[EpisodeRecord], detector: str, alpha: float | None) -> dict:
    fr = frames_above([r for r in records if r.kind == "clean"], detector)
    return {
        "target": alpha,
        "met": alpha is not None and fr.n > 0 and fr.rate <= alpha,
        "k": fr.k,
        "n": fr.n,
        "rate": fr.rate,
        "interval95": fr.interval(),
    }


# ------------------------------------------------------------------------------------------ inputs
def resolve_inputs(policy_path: str, sae_path: str, ood_params: str, demo_dir: str) -> tuple[Path, Path, Path, dict]:
    """(policy, SAE, ood_params.json, where each came from): given, else the demo's; what is missing is named."""
    demo = Path(demo_dir)
    origin, missing = {}, []
    policy = Path(policy_path) if policy_path else demo / "policy" / "pretrained_model"
    sae = Path(sae_path) if sae_path else demo / "sae"
    origin["policy"] = "given" if policy_path else f"demo {demo}"
    origin["sae"] = "given" if sae_path else f"demo {demo}"
    if not (policy / "config.json").is_file():
        missing.append(
            f"policy: no LeRobot pretrained_model at {policy}"
            + ("" if policy_path else " (run `make demo` or `pai demo --quick`, or pass --policy-path)")
        )
    if not (sae / "model.safetensors").is_file():
        missing.append(
            f"SAE: no model.safetensors in {sae}"
            + ("" if sae_path else " (run `make demo` or `pai demo --quick`, or pass --sae-path)")
        )
    params = Path(ood_params) if ood_params else sae / "ood_params.json"
    if not params.is_file():
        missing.append(
            f"OOD parameters: no {params} (run `pai calibrate-ood --sae-path {sae} --policy-path "
            f"{policy} ...` on held-out clean episodes)"
        )
    if missing:
        raise InputError("Cannot run the failure benchmark; missing:\n  " + "\n  ".join(missing))
    return policy, sae, params, origin


class SeedRule:
    """The seed's whole-frame SAE and its alarm, scoring the encoder tokens of pai's own forward."""

    def __init__(self, model, dtype, alarm_config):
        from pai_core.alarm import AlarmPolicy

        self.model, self.dtype = model, dtype
        self.threshold = float(model.threshold)
        self.alarm = AlarmPolicy(alarm_config)

    def reset(self) -> None:
        self.alarm.reset()

    def step(self, tokens) -> tuple[float, bool]:
        """(score / threshold, alarm active) of one frame's (S, D) tokens."""
        tok = tokens.detach().to("cpu", self.dtype).float()[None]
        score = float(self.model.score(tok)[0])
        return _ratio(score, self.threshold), self.alarm.update(score, self.threshold).active


def train_seed_rule(pipe, cfg: FailureBenchConfig):
    """The seed's rule as bench/ood.py trains it (the SAE's clean training tokens) -> (SeedRule, summary)."""
    import torch

    from bench.baselines import WholeFrameSAEConfig, train_whole_frame_sae
    from bench.ood import TokenTap, training_tokens

    extra = pipe.extractor.sae.config.extra
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(extra.get("dtype"), torch.float32)
    tap = TokenTap(pipe, dtype)
    tokens, source = training_tokens(
        pipe, tap, argparse.Namespace(train_root=cfg.train_root, batch_size=cfg.batch_size)
    )
    pipe.reset()
    print(
        f"[failure] seed's rule: whole-frame SAE on {tokens.shape[0]} training frames of "
        f"{tuple(tokens.shape[1:])} tokens from {source}",
        flush=True,
    )
    model, info = train_whole_frame_sae(
        tokens,
        WholeFrameSAEConfig(
            n_features=cfg.baseline_features, l1_coef=cfg.baseline_l1, steps=cfg.baseline_steps, sigma=cfg.sigma
        ),
    )
    info["source"] = source
    return SeedRule(model, dtype, pipe.alarm.config), info


def load_pipeline(cfg: FailureBenchConfig):
    """The node's pipeline (rollout off: nothing the alarm reads depends on it)."""
    from pai_core.alarm import AlarmConfig
    from pai_core.engine import IntrospectionConfig
    from pai_core.pipeline import Pipeline
    from pai_core.sim.env import ACTION_NAMES, CAMERA, JOINT_NAMES

    pipe = Pipeline.load(
        cfg.policy_path,
        cfg.sae_path,
        cfg.ood_params,
        device=cfg.device,
        alarm=AlarmConfig(n=cfg.alarm_n, m=cfg.alarm_m, latch=True),
        engine_config=IntrospectionConfig(device=cfg.device, rollout=False),
    )
    engine = pipe.engine
    if (
        CAMERA not in engine.image_shapes
        or engine.state_dim != len(JOINT_NAMES)
        or engine.action_dim != len(ACTION_NAMES)
    ):
        raise InputError(
            f"{cfg.policy_path} is not a policy for the SO-101 simulation: it takes cameras "
            f"{list(engine.image_shapes)}, state {engine.state_dim}, actions {engine.action_dim}; "
            f"the simulation gives {CAMERA}, {len(JOINT_NAMES)} joints and takes {len(ACTION_NAMES)} "
            "actions"
        )
    if pipe.ood is None or pipe.threshold is None:
        raise InputError(f"{cfg.sae_path} has no OOD parameters: the alarm has no threshold")
    return pipe


def signal_names(pipe) -> list[str]:
    """pai's signals: the appearance score, then the further ones of ``ood_params.json``."""
    return [pipe.ood.score, *pipe.signal_thresholds()]


# ------------------------------------------------------------------------------------------ the loop
def _ratio(score: float, threshold: float) -> float:
    """score / threshold as the Pipeline's alarm compares them (threshold <= 0: any positive score is above)."""
    return score / threshold if threshold > 0 else (math.inf if score > threshold else 0.0)


def step_limit(condition: Condition, cfg: FailureBenchConfig) -> int:
    """Control steps the episode gets (``FailureBenchConfig.max_steps``)."""
    return cfg.max_steps * (2 if condition.frames == "skip" and cfg.skipped_frame == "hold" else 1)


def run_episode(
    pipe, sim, condition: Condition, seed: int, cfg: FailureBenchConfig, seed_rule: SeedRule | None = None
) -> EpisodeRecord:
    """One closed-loop episode: per step the condition's camera, ``Pipeline.step``, its action to the sim."""
    from pai_core.alarm import AlarmPolicy
    from pai_core.sim.disturb import Disturber
    from pai_core.sim.env import CAMERA

    signals = signal_names(pipe)
    thresholds = {pipe.ood.score: float(pipe.threshold)} | pipe.signal_thresholds()
    alone = {name: AlarmPolicy(pipe.alarm.config) for name in signals}
    traces = {PAI: Trace()} | {name: Trace() for name in signals}
    if seed_rule is not None:
        traces[SEED_RULE] = Trace()
        seed_rule.reset()
    disturber = Disturber(condition.disturbance, seed) if condition.disturbance is not None else None
    obs = sim.reset(seed)
    pipe.reset()
    frame_steps: list[int] = []
    signal_at_alarm, reason = None, ""
    last_image, last_action, success, step = None, None, False, 0
    for step in range(step_limit(condition, cfg)):
        if disturber is not None and disturber.maybe_apply(sim, step):
            obs = sim.observation()  # the first frame that shows it
        lost_frame = condition.frames == "skip" and step % 2 == 1
        if lost_frame:
            action = last_action
        else:
            seen = obs
            if condition.nuisance is not None:
                seen = condition.nuisance.observe(obs, seed=seed * 1000 + step)
            if condition.frames == "repeat" and step % 2 == 1:
                seen = replace(seen, images={CAMERA: last_image})
            last_image = seen.images[CAMERA]
            frame = pipe.step(seen)
            frame_steps.append(step)
            ratios = {pipe.ood.score: _ratio(frame.ood_score, thresholds[pipe.ood.score])}
            ratios |= {name: _ratio(frame.signals[name], thresholds[name]) for name in signals[1:]}
            top = max(ratios, key=lambda k: ratios[k])
            traces[PAI].stats.append(ratios[top])
            if frame.alarm.active and traces[PAI].alarm_step is None:
                traces[PAI].alarm_step, signal_at_alarm, reason = step, top, frame.alarm.reason
            for name in signals:
                traces[name].stats.append(ratios[name])
                if alone[name].update(ratios[name], 1.0, source=name).active and traces[name].alarm_step is None:
                    traces[name].alarm_step = step
            if seed_rule is not None:
                ratio, active = seed_rule.step(frame.result.tokens)
                traces[SEED_RULE].stats.append(ratio)
                if active and traces[SEED_RULE].alarm_step is None:
                    traces[SEED_RULE].alarm_step = step
            action = np.asarray(frame.result.action, dtype=np.float64).reshape(-1)
        last_action = action
        obs, success = sim.hold() if lost_frame and cfg.skipped_frame == "hold" else sim.step(action)
        if success:
            break
    steps = step + 1
    onset = disturber.applied_at if disturber is not None and disturber.applied_at is not None else 0
    return EpisodeRecord(
        condition.name,
        condition.kind,
        seed,
        bool(success),
        steps,
        onset,
        None if success else steps - 1,
        frame_steps,
        traces,
        signal_at_alarm,
        reason,
        disturber.info if disturber is not None and disturber.applied_at is not None else None,
    )


def run_benchmark(
    cfg: FailureBenchConfig, pipe, seed_rule: SeedRule | None = None, progress: bool = True
) -> list[EpisodeRecord]:
    """Every condition's episodes; one simulator per scene, sized to the policy's camera."""
    from tqdm import tqdm

    from pai_core.sim.disturb import make_sim
    from pai_core.sim.env import CAMERA, SimConfig

    conditions = build_conditions(cfg.disturb_step)
    h, w = pipe.engine.image_shapes[CAMERA]
    sims: dict[str, object] = {}
    records: list[EpisodeRecord] = []
    bar = tqdm(total=len(cfg.conditions) * cfg.episodes, desc="failure bench", unit="ep", disable=not progress)
    try:
        for name in cfg.conditions:
            cond = conditions[name]
            if cond.scene not in sims:
                sim_cfg = SimConfig(height=h, width=w, max_steps=cfg.max_steps, perturbation=cond.perturbation)
                sims[cond.scene] = make_sim(sim_cfg, cond.disturbance)
            for i in range(cfg.episodes):
                bar.set_description(f"failure bench: {name}")
                records.append(run_episode(pipe, sims[cond.scene], cond, cfg.seed + i, cfg, seed_rule))
                mine = [r for r in records if r.condition == name]
                bar.set_postfix(
                    ok=f"{sum(r.success for r in mine)}/{len(mine)}",
                    alarmed=sum(r.alarm_step is not None for r in mine),
                )
                bar.update()
    finally:
        bar.close()
        for sim in sims.values():
            sim.close()
    return records


_WORKER: dict = {}  # a worker process's config, pipeline and seed's rule (``run_in_workers``)


def _start_worker(cfg: FailureBenchConfig, seed_rule: SeedRule | None) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER.update(cfg=cfg, pipe=load_pipeline(cfg), seed_rule=seed_rule)


def _run_condition(name: str) -> list[EpisodeRecord]:
    cfg = replace(_WORKER["cfg"], conditions=[name])
    return run_benchmark(cfg, _WORKER["pipe"], _WORKER["seed_rule"], progress=False)


def run_in_workers(cfg: FailureBenchConfig, seed_rule: SeedRule | None, progress: bool = True) -> list[EpisodeRecord]:
    """``run_benchmark`` with the conditions spread over ``cfg.workers`` processes (spawned: MuJoCo's EGL
    context does not survive a fork); records come back in the order of ``cfg.conditions``."""
    import multiprocessing

    from tqdm import tqdm

    ctx = multiprocessing.get_context("spawn")
    records: list[EpisodeRecord] = []
    with ctx.Pool(min(cfg.workers, len(cfg.conditions)), _start_worker, (cfg, seed_rule)) as pool:
        done = pool.imap(_run_condition, cfg.conditions)
        for name, mine in tqdm(zip(cfg.conditions, done), total=len(cfg.conditions), disable=not progress):
            print(f"[failure] {name}: {sum(r.success for r in mine)}/{len(mine)} succeeded", flush=True)
            records.extend(mine)
    return records


# ------------------------------------------------------------------------------------------ results
def summarise(records: Sequence[EpisodeRecord], detectors: list[str], alpha: float | None = None) -> dict:
    """Metrics per condition and pooled (all episodes; and clean + nuisance only), per detector, and the
    targets for pai and the seed's rule."""
    kinds = dict.fromkeys([r.condition for r in records])
    kinds = {c: next(r.kind for r in records if r.condition == c) for c in kinds}
    per = {}
    for c, kind in kinds.items():
        mine = [r for r in records if r.condition == c]
        per[c] = {
            "kind": kind,
            "episodes": len(mine),
            "successes": sum(r.success for r in mine),
            "fired": fired_signals(mine),
            "detectors": {d: detector_metrics(mine, d) for d in detectors},
        }
        if kind == "disturbance":
            per[c]["disturbed"] = sum(r.disturbance is not None for r in mine)
    quiet = [r for r in records if r.kind in ("clean", "nuisance")]
    return {
        "conditions": per,
        "pooled": {
            "episodes": len(records),
            "successes": sum(r.success for r in records),
            "fired": fired_signals(records),
            "detectors": {d: detector_metrics(records, d) for d in detectors},
        },
        "pooled_clean_and_nuisance": {
            "episodes": len(quiet),
            "detectors": {d: detector_metrics(quiet, d) for d in detectors} if quiet else {},
        },
        "targets": {d: targets(records, kinds, d, alpha) for d in detectors if d in (PAI, SEED_RULE)},
    }


def _fmt_auc(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _fmt_lead(m: dict) -> str:
    return "-" if m["lead_time_median"] is None else f"{m['lead_time_median']:g} ({len(m['lead_times'])})"


def format_table(result: dict) -> str:
    """The printed report: per condition pai against the seed's rule, pooled per signal, the targets."""
    s, lines = result["summary"], []
    dets = result["detectors"]
    base = SEED_RULE in dets
    cfg = result["config"]
    lines.append(
        f"\nClosed-loop failure benchmark: {len(s['conditions'])} conditions x {cfg['episodes']} episodes "
        f"(cube seeds {cfg['seed']}-{cfg['seed'] + cfg['episodes'] - 1}), max {cfg['max_steps']} steps, "
        f"alarm {cfg['alarm_n']} of {cfg['alarm_m']} latched"
    )
    lines.append(
        textwrap.fill(
            f"pai: {' + '.join(result['signals'])} (thresholds "
            + ", ".join(f"{k} {v:.4g}" for k, v in result["thresholds"].items())
            + ")"
            + (
                f"; seed: whole-frame SAE, mean + {cfg['sigma']:g} sigma ({result['seed_threshold']:.4g})"
                if base
                else ""
            ),
            118,
            subsequent_indent="  ",
        )
    )
    short = {name: "".join(part[0] for part in name.split("_")) for name in result["signals"]}
    cols = [PAI, SEED_RULE] if base else [PAI]

    def cells(values: list[str], width: int) -> str:
        return " ".join(f"{v:<{width}}" for v in values)

    widths = {"fs": 7, "ca": 7, "au": 5, "ld": 8}
    span = {k: len(cells(["x"] * len(cols), w)) for k, w in widths.items()}
    head = (
        f"{'condition':<13} {'kind':<12} {'ok/eps':>6} | {'false stops':<{span['fs']}} | {'caught':<{span['ca']}} | "
        f"{'AUROC':<{span['au']}} | {'lead (n)':<{span['ld']}} | fired"
    )
    sub = (
        f"{'':<13} {'':<12} {'':>6} | "
        + " | ".join(cells(cols, w) for w in widths.values())
        + " | "
        + "/".join(short.values())
    )
    lines += [head, sub, "-" * len(head)]

    def row(name: str, kind: str, block: dict) -> str:
        d = [block["detectors"][c] for c in cols]
        fs = cells([f"{m['false_stops']}/{m['successful_episodes']}" for m in d], widths["fs"])
        ca = cells([f"{m['caught']}/{m['failed_episodes']}" for m in d], widths["ca"])
        au = cells([_fmt_auc(m["auroc"]) for m in d], widths["au"])
        ld = cells([_fmt_lead(m) for m in d], widths["ld"])
        fired = "/".join(str(block["fired"].get(n, 0)) for n in short)
        ok = f"{block['successes']}/{block['episodes']}"
        return f"{name:<13} {kind:<12} {ok:>6} | {fs} | {ca} | {au} | {ld} | {fired}"

    for name, block in s["conditions"].items():
        lines.append(row(name, block["kind"], block))
    lines.append("-" * len(head))
    lines.append(row("pooled", "", s["pooled"]))
    lines.append(
        "fired: episodes whose pai alarm named each signal (" + ", ".join(f"{a} = {n}" for n, a in short.items()) + ")"
    )
    lines.append(
        "false stops: successful episodes whose alarm rose; caught: failed episodes alarmed within "
        "[onset, lost];\nlead: steps from the alarm to the lost step (median, episodes)"
    )
    applied = [f"{c} {b['disturbed']}/{b['episodes']}" for c, b in s["conditions"].items() if "disturbed" in b]
    if applied:
        lines.append(
            textwrap.fill(
                "disturbances applied: " + ", ".join(applied) + " (slip only once the cube is "
                "held; an episode without it counts as the clean scene's, onset 0)",
                118,
            )
        )

    lines.append(
        f"\nEach detector alone (pooled; false stops over clean + nuisance conditions, "
        f"{s['pooled_clean_and_nuisance']['episodes']} episodes)"
    )
    head2 = (
        f"{'detector':<34} {'false stops':>12} {'caught':>12} {'premature':>9} {'AUROC':>6} "
        f"{'lead med (n)':>13} {'onset->alarm':>12}"
    )
    lines += [head2, "-" * len(head2)]
    quiet = s["pooled_clean_and_nuisance"]["detectors"]
    for det in dets:
        name = {PAI: "pai (the node's alarm: any signal)", SEED_RULE: "seed's rule (whole-frame SAE)"}.get(
            det, f"pai: {det} alone"
        )
        m = s["pooled"]["detectors"][det]
        fs = f"{quiet[det]['false_stops']}/{quiet[det]['successful_episodes']}" if quiet else "-"
        delay = "-" if m["onset_delay_median"] is None else f"{m['onset_delay_median']:g}"
        lines.append(
            f"{name:<34} {fs:>12} {str(m['caught']) + '/' + str(m['failed_episodes']):>12} "
            f"{m['premature_alarms']:>9} {_fmt_auc(m['auroc']):>6} {_fmt_lead(m):>13} {delay:>12}"
        )

    for det, t in s["targets"].items():
        who = "pai's alarm (the node's)" if det == PAI else "the seed's rule"
        lines.append(f"\nTargets, {who}:")
        fs = t["false_stops"]
        parts = [
            f"{c} {v['k']}/{v['n']}"
            + (f" = {100 * v['rate']:.0f} % (+-{100 * v['plus_minus']:.0f} %)" if v["n"] else "")
            for c, v in fs["per_condition"].items()
        ]
        verdict = "met" if fs["met"] else "NOT met" + (f" (over: {', '.join(fs['missed'])})" if fs["missed"] else "")
        if fs["untested"]:
            verdict += f"; untested, no successful episode: {', '.join(fs['untested'])}"
        lines.append(
            textwrap.fill(
                f"  false stops <= {100 * FALSE_STOP_TARGET:.0f} % of successful episodes in every "
                f"clean and nuisance condition: {verdict}",
                118,
                subsequent_indent="    ",
            )
        )
        lines.append(textwrap.fill("; ".join(parts), 118, initial_indent="    ", subsequent_indent="    "))
        ca = t["catch"]
        rate = "-" if ca["rate"] is None else f"{100 * ca['rate']:.0f} %"
        lines.append(
            textwrap.fill(
                f"  >= {100 * CATCH_TARGET:.0f} % of failing episodes alarmed before lost: "
                f"{ca['k']}/{ca['n']} = {rate}: "
                f"{'met' if ca['met'] else 'NOT met'}"
                + (
                    f" (with {ca['n']} failing episodes the rate is known to +-{100 * ca['plus_minus']:.0f} %)"
                    if ca["n"]
                    else ""
                ),
                118,
                subsequent_indent="    ",
            )
        )
        au = t["auroc"]
        lines.append(
            f"  pooled episode ROC-AUC >= {AUROC_TARGET}: {_fmt_auc(au['value'])} ({au['failed']} failed vs "
            f"{au['successful']} successful episodes): {'met' if au['met'] else 'NOT met'}; without the named "
            f"scene perturbations (alarmed by design): {_fmt_auc(au['training_scene']['value'])} "
            f"({au['training_scene']['failed']} vs {au['training_scene']['successful']})"
        )
        cf = t.get("clean_frames")
        if cf and cf["n"]:
            lo, hi = cf["interval95"]
            lines.append(
                f"  frames of successful clean episodes above threshold <= alpha {cf['target']}: {cf['k']}/{cf['n']} = "
                f"{cf['rate']:.4f} (95 % {lo:.4f}-{hi:.4f}): {'met' if cf['met'] else 'NOT met'}"
            )
    lines.append("  (+-: half width of the 95 % Wilson interval of a rate measured on that many episodes)")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> Path:
    """Per condition: false-stop rate (successful episodes) and catch rate (failed episodes), pai and the
    seed's rule side by side, counts on the bars, targets as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = result["summary"]["conditions"]
    names = list(per)
    dets = [d for d in (PAI, SEED_RULE) if d in result["detectors"]]
    colours = {PAI: "#4c72b0", SEED_RULE: "#dd8452"}
    labels = {PAI: "pai (node's alarm)", SEED_RULE: "seed's rule"}
    x = np.arange(len(names))
    width = 0.8 / len(dets)
    fig, axes = plt.subplots(2, 1, figsize=(max(9.0, 0.62 * len(names) + 2.5), 7.8), sharex=True)
    panels = (
        ("false_stops", "successful_episodes", "false stops\n(% of successful episodes)", FALSE_STOP_TARGET),
        ("caught", "failed_episodes", "failures caught before lost\n(% of failed episodes)", CATCH_TARGET),
    )
    for ax, (k_key, n_key, title, target) in zip(axes, panels):
        for j, det in enumerate(dets):
            ks = [per[c]["detectors"][det][k_key] for c in names]
            ns = [per[c]["detectors"][det][n_key] for c in names]
            rates = [100 * k / n if n else 0.0 for k, n in zip(ks, ns)]
            pos = x + (j - (len(dets) - 1) / 2) * width
            ax.bar(pos, rates, width * 0.95, color=colours[det], label=labels[det])
            for p, r, k, n in zip(pos, rates, ks, ns):
                ax.text(p, r + 1.5, f"{k}/{n}" if n else "n=0", ha="center", va="bottom", fontsize=7, rotation=90)
        ax.axhline(100 * target, color="#c44e52", lw=1.2, ls="--", label=f"target {100 * target:.0f} %")
        ax.set_ylim(0, 125)
        ax.set_ylabel(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper right", ncol=3)
    kinds = [per[c]["kind"] for c in names]
    for i in range(1, len(names)):  # separators between kinds of condition
        if kinds[i] != kinds[i - 1]:
            for ax in axes:
                ax.axvline(i - 0.5, color="grey", lw=0.6)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(
        [f"{c}\n({per[c]['successes']}/{per[c]['episodes']} ok)" for c in names], rotation=60, ha="right", fontsize=8
    )
    cfg = result["config"]
    axes[0].set_title(
        f"Closed-loop failure benchmark: {cfg['episodes']} episodes per condition, alarm "
        f"{cfg['alarm_n']} of {cfg['alarm_m']}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(cfg: FailureBenchConfig, output_dir: Path, setup: dict | None = None, progress: bool = True) -> dict:
    """Load, run every episode, summarise; writes failure.json and failure.png and returns the result."""
    start = time.perf_counter()
    pipe = load_pipeline(cfg)
    seed_rule, base_info = train_seed_rule(pipe, cfg) if cfg.baseline == "seed" else (None, {})
    if cfg.workers > 1:
        records = run_in_workers(cfg, seed_rule, progress)
    else:
        records = run_benchmark(cfg, pipe, seed_rule, progress)
    signals = signal_names(pipe)
    detectors = [PAI, *signals] + ([SEED_RULE] if seed_rule is not None else [])
    result = {
        "config": asdict(cfg),
        "setup": setup or {},
        "signals": signals,
        "thresholds": {pipe.ood.score: float(pipe.threshold)} | pipe.signal_thresholds(),
        "alpha": float(pipe.ood.alpha),
        "seed_threshold": seed_rule.threshold if seed_rule else None,
        "baseline": base_info,
        "detectors": detectors,
        "conditions": {c: build_conditions(cfg.disturb_step)[c].what for c in cfg.conditions},
        "definitions": {
            "onset_step": "first step whose frame shows the cause: the disturbance step, else 0",
            "lost_step": "failed episodes: the last step (max_steps - 1; frame_skip with hold: 2 max_steps - 1)",
            "false_stop": "a successful episode in which the alarm rose",
            "caught": "a failed episode whose alarm rose within [onset, lost]",
            "premature": "a failed episode whose alarm rose before the onset",
            "episode_statistic": "max of score/threshold (pai: over its signals) within [onset, lost]; successes: "
            "over the episode",
            "lead_time": "lost - alarm step, over caught failures",
        },
        "summary": summarise(records, detectors, float(pipe.ood.alpha)),
        "episodes": [r.to_dict() for r in records],
    }
    result["seconds"] = round(time.perf_counter() - start, 1)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "failure.json").write_text(json.dumps(result, indent=1))
    result["plot"] = str(plot(result, output_dir / "failure.png"))
    return result


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--policy-path", default="", help="LeRobot pretrained_model (default DEMO_DIR/policy/pretrained_model)"
    )
    ap.add_argument("--sae-path", default="", help="SAE folder with ood_params.json (default DEMO_DIR/sae)")
    flags.add_ood_params_path(
        ap, "ood_params.json (default SAE_PATH/ood_params.json)", old=["--ood-params"], default=""
    )
    ap.add_argument("--demo-dir", default="outputs/demo", help="`make demo` outputs to reuse (default outputs/demo)")
    ap.add_argument("--output-dir", default="outputs/failure_bench", help="failure.json and failure.png go here")
    ap.add_argument("--episodes", type=int, default=None, help="episodes per condition (quick 2, full 10)")
    ap.add_argument(
        "--conditions",
        nargs="*",
        default=None,
        choices=CONDITION_NAMES,
        metavar="NAME",
        help=f"conditions to run (default all): {' '.join(CONDITION_NAMES)}",
    )
    ap.add_argument("--seed", type=int, default=10_000, help="episode i places the cube with seed SEED + i")
    ap.add_argument(
        "--max-steps", type=int, default=None, help="steps after which an episode failed (quick 60, full 90)"
    )
    ap.add_argument("--disturb-step", type=int, default=-1, help="step of push and appear (default 10 and 8)")
    ap.add_argument(
        "--skipped-frame",
        choices=["hold", "repeat"],
        default="hold",
        help="frame_skip: the robot holds its pose on a tick without a frame, or repeats the last action",
    )
    ap.add_argument("--alarm-n", type=int, default=3, help="frames above threshold among the last M raising the alarm")
    ap.add_argument("--alarm-m", type=int, default=5, help="alarm window in frames")
    ap.add_argument("--no-baseline", action="store_true", help="leave out the seed's rule")
    ap.add_argument("--baseline-steps", type=int, default=None, help="whole-frame SAE steps (quick 500, full 2000)")
    ap.add_argument("--baseline-l1", type=float, default=1e-3, help="whole-frame SAE L1 coefficient")
    ap.add_argument("--baseline-features", type=int, default=0, help="whole-frame SAE features (0: S*D, the seed's)")
    ap.add_argument("--sigma", type=float, default=2.5, help="the seed's threshold: mean + SIGMA std")
    ap.add_argument(
        "--train-root",
        default="",
        help="clean dataset for the baseline's training tokens (default: the SAE's activation recording)",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes: 2 episodes, 60 steps, 500 baseline steps")
    ap.add_argument("--device", default="cpu", help="torch device of the policy and SAE")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument(
        "--workers", type=int, default=1, help="processes running the conditions, one torch thread each (default 1)"
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)

    try:
        policy, sae, params, origin = resolve_inputs(
            args.policy_path, args.sae_path, args.ood_params_path, args.demo_dir
        )
        cfg = FailureBenchConfig(
            str(policy),
            str(sae),
            str(params),
            conditions=args.conditions or list(CONDITION_NAMES),
            episodes=args.episodes or (2 if args.quick else 10),
            seed=args.seed,
            max_steps=args.max_steps or (60 if args.quick else 90),
            disturb_step=args.disturb_step,
            skipped_frame=args.skipped_frame,
            baseline="none" if args.no_baseline else "seed",
            baseline_steps=args.baseline_steps or (500 if args.quick else 2000),
            baseline_l1=args.baseline_l1,
            baseline_features=args.baseline_features,
            sigma=args.sigma,
            train_root=args.train_root,
            alarm_n=args.alarm_n,
            alarm_m=args.alarm_m,
            device=args.device,
            workers=args.workers,
        )
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(f"[failure] policy {policy} ({origin['policy']}), SAE {sae} ({origin['sae']}), {params}", flush=True)
        result = run(
            cfg,
            Path(args.output_dir),
            {"policy": str(policy), "sae": str(sae), "ood_params": str(params), "origin": origin},
            progress=not args.no_progress,
        )
    except (PaiError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    out = Path(args.output_dir)
    print(f"wrote {out / 'failure.json'} and {result['plot']} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
