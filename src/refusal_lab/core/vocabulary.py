"""The one table of what can be done where: intervention kinds, the method whose artifact each kind applies,
scopes, sites and placements. Every other module (hooks, factory, selection, the evaluator, the CLI's choices)
reads these; nothing else spells them out."""

from __future__ import annotations

from typing import Literal, get_args

from refusal_lab.core.errors import RefusalLabError

Kind = Literal["ablate", "actadd", "nullspace", "flip", "rank-k", "leace", "subspace", "classifier-actadd"]
KINDS: tuple[str, ...] = get_args(Kind)  # every intervention kind; "none" (the baseline) is not one of them
BASELINE = "none"
# the method whose chosen artifact each kind applies (a flip falls back to INLP's subspace when no flip was selected)
ARTIFACT_OF: dict[str, str] = {"ablate": "dim", "actadd": "dim", "nullspace": "inlp", "rank-k": "inlp",
                               "flip": "flip", "leace": "leace", "subspace": "subspace",
                               "classifier-actadd": "classifier"}
ADDITIVE_KINDS: tuple[str, ...] = ("actadd", "classifier-actadd")  # h + s·v: scaled, signed, never baked
CENTERABLE_KINDS: tuple[str, ...] = ("nullspace", "flip", "rank-k")  # may act about the training mean

MethodName = Literal["dim", "inlp", "flip", "classifier", "leace", "subspace"]
METHOD_NAMES: tuple[str, ...] = get_args(MethodName)

Scope = Literal["layer", "top50", "all"]
SCOPES: tuple[str, ...] = get_args(Scope)
Site = Literal["resid_pre", "attn_out", "mlp_out"]
SITES: tuple[str, ...] = get_args(Site)
Placement = Literal["each", "input", "writes"]
PLACEMENTS: tuple[str, ...] = get_args(Placement)
FlipVariant = Literal["input", "writes"]
FLIP_VARIANTS: tuple[str, ...] = get_args(FlipVariant)  # the placements a flip may use, by name

DEFAULT_SCOPE: dict[str, str] = {"ablate": "all", "subspace": "all"}  # every other kind: "layer"
DEFAULT_SITES: dict[str, tuple[str, ...]] = {"actadd": ("resid_pre",), "classifier-actadd": ("resid_pre",)}


def check_kind(kind: str, baseline: bool = True) -> str:
    """``kind`` if it is an intervention kind (or, with ``baseline``, ``"none"``), else a one-line error."""
    allowed = ((BASELINE,) if baseline else ()) + KINDS
    if kind not in allowed:
        raise RefusalLabError(f"unknown intervention {kind!r}; choose one of {', '.join(allowed)}")
    return kind


def check_scope(scope: str) -> str:
    """``scope`` if it is a scope, else a one-line error."""
    if scope not in SCOPES:
        raise RefusalLabError(f"unknown scope {scope!r}; scopes are {', '.join(SCOPES)}")
    return scope
