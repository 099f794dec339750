"""What the sinks of a run may know about it: cameras, feature names, thresholds, the OOD parameters.

Sinks read metadata only; handing them the whole ``Pipeline`` let any of them step, reset or reconfigure
it. ``RunInfo.of`` takes the description once, before the first frame, so every sink sees the same one.
It keeps ``feature_names()`` and ``signal_thresholds()`` as the pipeline spells them, so the message
builders (``ros_convert.frame_messages``) take either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..ood import OODParams
    from ..overlay import Scale


@dataclass(frozen=True)
class RunInfo:
    """Args:
    policy: where the policy came from (``LoadedPolicy.source``).
    cameras: the policy's camera feature names, in its order.
    names: feature names (labels where given, else ``f<index>``); empty without an SAE.
    has_sae: whether frames carry features and OOD scores.
    threshold: the OOD threshold in force (override, else calibrated), None without one.
    threshold_override: the threshold set by hand, None when the calibrated one is in force.
    ood: the OOD parameters, None without them.
    signals: further signals' thresholds by name (``OODParams.signals``).
    ood_scale: fixed colour scale of the OOD maps (``ood_map_scale``), None for per-frame normalisation.
    """

    policy: str = ""
    cameras: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    has_sae: bool = False
    threshold: float | None = None
    threshold_override: float | None = None
    ood: OODParams | None = None
    signals: Mapping[str, float] = field(default_factory=dict)
    ood_scale: Scale | dict[str, Scale] | None = None

    @classmethod
    def of(cls, pipeline: Any) -> RunInfo:
        """The description of ``pipeline`` as it stands now (a ``RunInfo`` is returned as it is)."""
        if isinstance(pipeline, RunInfo):
            return pipeline
        return cls(
            policy=str(pipeline.engine.loaded.source),
            cameras=tuple(pipeline.engine.camera_names),
            names=tuple(pipeline.feature_names()),
            has_sae=pipeline.extractor is not None,
            threshold=pipeline.threshold,
            threshold_override=pipeline.threshold_override,
            ood=pipeline.ood,
            signals=dict(pipeline.signal_thresholds()),
            ood_scale=ood_map_scale(pipeline),
        )

    @property
    def n_features(self) -> int:
        return len(self.names)

    def feature_names(self) -> list[str]:
        """As ``Pipeline.feature_names``."""
        return list(self.names)

    def signal_thresholds(self) -> dict[str, float]:
        """As ``Pipeline.signal_thresholds``."""
        return dict(self.signals)


def ood_map_scale(pipeline: Any) -> Scale | dict[str, Scale] | None:
    """A fixed (untinted, full heat) scale for the pipeline's OOD maps, derived from the threshold in force by
    the scorer (``Scorer.map_scale``: what its maps mean), so a colour means the same in every frame and a
    clean frame looks clean (per-frame normalisation paints every frame's largest value at full heat, clean
    or not). None (per-frame normalisation) without a threshold or where the score does not come from the
    maps."""
    if pipeline.ood is None or pipeline.threshold is None:
        return None
    return pipeline.scorer.map_scale(float(pipeline.threshold))
