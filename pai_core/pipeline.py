"""Engine + SAE + OOD + alarm: the single implementation of a frame's processing.

The ROS node, offline replay and the Python API all call ``Pipeline.step`` / ``step_batch``; that is
why replay through the node and replay offline give identical numbers.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .alarm import AlarmConfig, AlarmPolicy, AlarmState
from .engine import FrameResult, IntrospectionConfig, Introspector
from .errors import ModelError
from .features import FeatureExtractor
from .hub import locate_sae
from .observation import Observation
from .ood import OODParams, ReconMse, ScoreBatch, Scorer, load_scorer
from .sae import load_sae

if TYPE_CHECKING:
    import torch

    from .settings import PaiSettings

log = logging.getLogger(__name__)


@dataclass
class Frame:
    """One observation's complete output (what every sink consumes).

    Args:
        observation: the input.
        result: engine output (action, attention maps, rollout, shares, tokens).
        features: (n_latents,) pooled SAE feature activations, or None without an SAE.
        ood_score: OOD score, or None without an SAE.
        ood_maps: camera -> (h, w) reconstruction error map.
        threshold: OOD threshold in force.
        alarm: alarm state after this frame.
        token_error: (S,) per-token SAE reconstruction error (what the OOD score is computed from).
        codes: (S, n_latents) sparse SAE codes of every token (a torch view on the SAE's device), kept
            only when ``Pipeline.keep_codes`` is set (for spatial feature maps: ``features.feature_maps``).
        signals: scores of the further signals the alarm watches (``OODParams.signals``), by name.
        state_coverage: ``patch_knn`` only: the joint state's distance to the nearest reference state over
            the reference's coverage radius (above 1 the reference does not cover this state and the
            score is not trusted); None for other scores.
    """

    observation: Observation
    result: FrameResult
    features: np.ndarray | None = None
    ood_score: float | None = None
    ood_maps: dict[str, np.ndarray] = field(default_factory=dict)
    threshold: float | None = None
    alarm: AlarmState = field(default_factory=lambda: AlarmState(False, "", 0))
    codes: torch.Tensor | None = None
    token_error: np.ndarray | None = None
    state_coverage: float | None = None
    signals: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """Runs every introspection stage for each observation. SAE and OOD parts are optional."""

    def __init__(
        self,
        engine: Introspector,
        extractor: FeatureExtractor | None = None,
        ood: OODParams | None = None,
        alarm: AlarmConfig | None = None,
        feature_labels: dict[int, str] | None = None,
    ):
        self.engine = engine
        self.extractor = extractor
        self.ood = ood  # the setter also loads a kNN score's reference
        self.alarm = AlarmPolicy(alarm)
        self.threshold_override: float | None = None
        self.feature_labels = feature_labels or {}
        self.keep_codes = False  # set to keep each frame's token codes (Frame.codes) for spatial maps
        if extractor is not None:
            extractor.check_width(int(engine.policy.config.dim_model), engine.loaded.source)
            extra = extractor.sae.config.extra
            check_made_for(engine, "SAE", extra.get("policy_fingerprint", ""), extractor.sae.config.policy)

    @property
    def ood(self) -> OODParams | None:
        return self._ood

    @ood.setter
    def ood(self, params: OODParams | None) -> None:
        """OOD parameters in force; they bring their scorer along (``ood.load_scorer``: a kNN score's
        reference frames, a standardiser), and the engine keeps the backbone maps when it needs them."""
        if params is not None:
            check_made_for(
                self.engine,
                f"OOD parameters {Path(params.source_dir or '.') / 'ood_params.json'}",
                params.policy_fingerprint,
                params.policy,
            )
        self._ood = params
        self.scorer: Scorer = load_scorer(params) if params is not None else ReconMse()
        self.signals: dict[str, tuple[Scorer, float]] = {}  # further signals: name -> (scorer, threshold)
        signals = [params.signal(i) for i in range(len(params.signals))] if params is not None else []
        for signal in signals:
            self.signals[signal.score] = (load_scorer(signal), signal.threshold)
        self.engine.adapter.keep_vision_features = any(
            s.needs_vision_features for s in [self.scorer, *(sc for sc, _ in self.signals.values())]
        )

    @classmethod
    def load(
        cls,
        policy_path: str,
        sae_path: str = "",
        ood_params_path: str = "",
        device: str = "cpu",
        alarm: AlarmConfig | None = None,
        labels_path: str = "",
        engine_config: IntrospectionConfig | None = None,
        load_ood: bool = True,
    ) -> Pipeline:
        """Load the policy and, when given, the SAE, its ``ood_params.json`` (unless ``load_ood`` is off:
        calibration replaces it) and ``labels.json``."""
        extractor = ood = None
        labels: dict[int, str] = {}
        engine_config = engine_config or IntrospectionConfig(device=device)
        if sae_path:
            sae_dir = locate_sae(sae_path).path  # a hub id: its snapshot holds the OOD files and labels too
            sae = load_sae(sae_dir, device=device)
            engine_config.token_layer = sae.config.layer
            extractor = FeatureExtractor(sae)
            ood_file = Path(ood_params_path) if ood_params_path else sae_dir / "ood_params.json"
            if not load_ood:
                pass
            elif ood_file.is_file():
                ood = OODParams.load(ood_file)
            elif ood_params_path:
                ood = OODParams.load(ood_file)  # raises a clear ModelError
            else:
                log.warning("SAE %s has no ood_params.json: features only, no OOD alarm (pai calibrate-ood)", sae_path)
            labels_file = Path(labels_path) if labels_path else sae_dir / "labels.json"
            if labels_file.is_file():
                labels = load_labels(labels_file)
        engine = Introspector.from_pretrained(policy_path, engine_config)
        return cls(engine, extractor, ood, alarm, labels)

    @classmethod
    def from_settings(cls, settings: PaiSettings) -> Pipeline:
        """The node's and replay's pipeline: ``PaiSettings`` models, device, dtype, policy overrides, alarm."""
        from .policy import parse_overrides

        engine_config = IntrospectionConfig(
            device=settings.device,
            model_dtype=settings.model_dtype,
            policy_overrides=parse_overrides(settings.policy_overrides),
        )
        pipe = cls.load(
            settings.policy_path,
            settings.sae_path,
            settings.ood_params_path,
            settings.device,
            settings.alarm,
            settings.feature_labels_path,
            engine_config=engine_config,
        )
        if settings.threshold > 0:
            pipe.threshold_override = settings.threshold
        return pipe

    @property
    def threshold(self) -> float | None:
        if self.threshold_override is not None:
            return self.threshold_override
        return self.ood.threshold if self.ood else None

    def ood_summary(self) -> dict:
        """What the OOD alarm runs on, for diagnostics and reports: score, alpha, threshold and, for the kNN
        scores, the reference's size and where it lives (memory-mapped from disk or on the GPU); per further
        signal its threshold and state (``action_consistency``: the repeated frames it held)."""
        if self.ood is None:
            return {"ood": "none"}
        out = {
            "ood_score": self.ood.score,
            "ood_alpha": self.ood.alpha,
            "ood_threshold": None if self.threshold is None else round(float(self.threshold), 6),
        }
        for name, (scorer, thr) in self.signals.items():
            out |= {f"signal_{name}_threshold": round(float(thr), 6)}
            out |= {f"signal_{name}_{k}": v for k, v in scorer.describe().items()}
        return out | {f"reference_{k}": v for k, v in self.scorer.describe().items()}

    @property
    def n_features(self) -> int:
        return self.extractor.sae.config.n_latents if self.extractor else 0

    def feature_names(self) -> list[str]:
        """Names of the features: labels where given, else ``f<index>``."""
        return [self.feature_labels.get(i, f"f{i}") for i in range(self.n_features)]

    def reset(self) -> None:
        """New episode: LeRobot's action queue, the scorers' history and the alarm window start over (the
        latch too)."""
        self.engine.reset()
        self.alarm.reset()
        for scorer in [self.scorer, *(sc for sc, _ in self.signals.values())]:
            scorer.reset()

    def step(self, obs: Observation) -> Frame:
        """Live: one observation, the next action with LeRobot's queueing."""
        return self._finish([obs], [self.engine.step(obs)])[0]

    def step_batch(self, observations: Sequence[Observation]) -> list[Frame]:
        """Replay and training: a batch of observations in time order; the alarm advances frame by frame."""
        return self._finish(observations, self.engine.step_batch(observations))

    def _finish(self, observations: Sequence[Observation], results: list[FrameResult]) -> list[Frame]:
        frames = [Frame(o, r) for o, r in zip(observations, results)]
        if self.extractor is None or not frames:
            return frames
        import torch

        tokens = [r.tokens for r in results if r.tokens is not None]
        if len(tokens) != len(results):
            raise ModelError("the SAE reads the encoder tokens, but the engine captured none")
        out = self.extractor(torch.stack(tokens))
        batch = ScoreBatch(results, observations, out.token_error)
        scored = self.scorer.score(batch)
        scores, maps, coverage = scored.scores, scored.maps, scored.coverage
        extra = {name: (scorer.score(batch).scores, thr) for name, (scorer, thr) in self.signals.items()}
        threshold = self.threshold
        for i, frame in enumerate(frames):
            frame.features = out.features[i]
            frame.ood_score = float(scores[i])
            frame.ood_maps = maps[i]
            frame.token_error = out.token_error[i]
            frame.threshold = threshold
            if coverage is not None:
                frame.state_coverage = float(coverage[i])
            if self.keep_codes:
                frame.codes = out.codes[i]
            frame.signals = {name: float(sig[i]) for name, (sig, _) in extra.items()}
            if threshold is not None and not extra:
                frame.alarm = self.alarm.update(frame.ood_score, threshold)
            elif threshold is not None and self._ood is not None:  # any signal above its joint threshold
                ratios = {self._ood.score: _ratio(frame.ood_score, threshold)} | {
                    name: _ratio(frame.signals[name], thr) for name, (_, thr) in extra.items()
                }
                source = max(ratios, key=lambda k: ratios[k])
                frame.alarm = self.alarm.update(ratios[source], 1.0, source=source)
        return frames

    def signal_thresholds(self) -> dict[str, float]:
        """The thresholds of the further signals, by name (the appearance score's is ``threshold``)."""
        return {name: thr for name, (_, thr) in self.signals.items()}


def _ratio(score: float, threshold: float) -> float:
    """score / threshold, where a threshold of zero or less counts every positive score as above it."""
    return score / threshold if threshold > 0 else (math.inf if score > threshold else 0.0)


def check_made_for(engine: Introspector, what: str, fingerprint: str, made_with: str) -> None:
    """Refuse a file made for another policy: its recorded ``policy_fingerprint`` must be this policy's.
    Files from before fingerprints were recorded are accepted with a warning."""
    import logging

    if not fingerprint:
        logging.getLogger(__name__).warning(
            "%s records no policy fingerprint (made before pai recorded one): cannot check it was made for %s",
            what,
            engine.loaded.source,
        )
        return
    if fingerprint != engine.fingerprint:
        raise ModelError(
            f"{what} was made for policy {made_with or '?'} (fingerprint {fingerprint}), not for "
            f"{engine.loaded.source} (fingerprint {engine.fingerprint}); train or calibrate it on this "
            "policy's activations"
        )


def vision_batch(
    results: Sequence[FrameResult], observations: Sequence[Observation]
) -> tuple[dict[str, list[torch.Tensor]], np.ndarray | None]:
    """Per camera the batch's backbone maps [(B, C, h, w)], and the (B, S) joint states (None without)."""
    import torch

    features = [r.vision_features for r in results if r.vision_features is not None]
    if len(features) != len(results):
        raise ModelError("patch_knn scores the backbone feature maps, but the engine kept none")
    maps = {
        cam: [torch.stack([f[cam][j] for f in features]) for j in range(len(levels))]
        for cam, levels in features[0].items()
    }
    states = (
        None if any(o.state is None for o in observations) else np.stack([np.asarray(o.state) for o in observations])
    )
    return maps, states


def load_labels(path: str | Path) -> dict[int, str]:
    """labels.json of ``pai label-features``: {"features": {"12": {"name": ...}}} -> {12: name}."""
    data = json.loads(Path(path).read_text())
    items = data.get("features", data)
    names = {int(k): (v.get("name", "") if isinstance(v, dict) else str(v)) for k, v in items.items()}
    return {k: name for k, name in names.items() if name}  # unnamed features keep f<index>
