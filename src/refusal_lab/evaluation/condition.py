"""A condition: what the evaluator scores — the unmodified model, an intervention, its random control, an optimize
trial or an exported edit — as structured fields, never a name to parse.

``name`` is only a label (a table's row name, a progress line). What was applied is ``interventions``; how it was
built is ``kind`` / ``scope`` / ``method`` and the builder's ``params`` (layer, position, k, alpha, flip variant,
order, scale, centring, which scope selected it, …); ``goal`` gives the sign of Δ for refusal-type metrics. The
:attr:`Condition.hash` identifies the applied interventions by value in the results store.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from refusal_lab.core.vocabulary import BASELINE


def intervention_hash(name: str, interventions: Sequence) -> str:
    """sha256 (16 hex) over a condition's name and every intervention's layers, sites, placement and transform
    parameters (tensors by value), so a re-extracted direction is a different intervention."""
    digest = hashlib.sha256(name.encode())

    def feed(obj, depth: int = 0) -> None:
        if isinstance(obj, torch.Tensor):
            digest.update(obj.detach().float().cpu().contiguous().numpy().tobytes())
        elif isinstance(obj, (int, float, str, bool, type(None), tuple)):
            digest.update(repr(obj).encode())
        elif depth < 2 and hasattr(obj, "__dict__"):
            digest.update(type(obj).__name__.encode())
            for key, value in sorted(vars(obj).items()):
                digest.update(key.encode())
                feed(value, depth + 1)

    for iv in interventions:
        feed((iv.layers, iv.sites, iv.placement))
        feed(iv.transform)
    return digest.hexdigest()[:16]


@dataclass
class Condition:
    """One thing to score (see the module docstring)."""

    name: str
    interventions: list = field(default_factory=list, repr=False)
    kind: str = BASELINE
    scope: str = ""
    method: str = BASELINE
    goal: str = "bypass"  # bypass (remove refusal) or induce (add it)
    control: bool = False
    control_for: str | None = None  # the name of the condition this one is the random control of
    seed: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        return intervention_hash(self.name, self.interventions)

    def params_json(self) -> str:
        """The builder's scalar settings as canonical JSON (None and NaN left out), stored beside every result row
        so a reader gets them as fields."""
        return json.dumps({k: v for k, v in self.params.items() if isinstance(v, (bool, int, float, str))
                           and not (isinstance(v, float) and math.isnan(v))}, sort_keys=True)

    def meta(self) -> dict[str, Any]:
        """Every field but the interventions, ``params`` flattened in (a table row's identity columns)."""
        return {"name": self.name, "kind": self.kind, "scope": self.scope, "method": self.method, "goal": self.goal,
                "control": self.control, "control_for": self.control_for, "seed": self.seed, **self.params}


__all__ = ["Condition", "intervention_hash"]
