"""Score name -> scorer class. A new signal registers itself with ``@register``; ``SCORERS`` is what
``--score`` accepts and ``ood_params.json`` may name."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar, cast

if TYPE_CHECKING:
    from .params import OODParams
    from .scorer import Scorer

SCORERS: dict[str, type[Scorer]] = {}
T = TypeVar("T", bound=type)


def register(cls: T) -> T:
    scorer = cast("type[Scorer]", cls)
    SCORERS[scorer.name] = scorer
    return cls


def scorer_class(name: str) -> type[Scorer]:
    _load_builtin()
    if name not in SCORERS:
        raise ValueError(f"score={name!r} is not one of {sorted(SCORERS)}")
    return SCORERS[name]


def load_scorer(params: OODParams) -> Scorer:
    """The scorer ``params`` names, with its files (reference frames, standardiser) loaded."""
    return scorer_class(params.score).load(params)


def descriptions() -> dict[str, str]:
    _load_builtin()
    return {name: cls.description for name, cls in SCORERS.items()}


def _load_builtin() -> None:
    from . import action_consistency, patch_knn, recon, token_knn  # noqa: F401  (each registers its scorers)


__all__: list[str] = ["SCORERS", "descriptions", "load_scorer", "register", "scorer_class"]
