"""The abliteration search space (pure: torch and pydantic only).

An abliteration edits the two residual-stream writers of every layer ``l`` (attention output, MLP output):
``y ↦ y − w_{l,c} (y·r̂_l) r̂_l`` on each write ``y [..., d]`` of component ``c``, which equals the weight edit
``W_c ← W_c − w_{l,c} r̂_l r̂_lᵀ W_c`` (``W [d, d_in]``, outputs on the left). ``w = 1`` removes the write's component
along ``r̂_l``; ``w ∈ (0, 1)`` shrinks it; ``w > 1`` reverses part of it.

Per component, the weights over layers are a tent kernel (:class:`Kernel`): ``max_weight`` at
``max_weight_position``, falling linearly to ``min_weight`` at distance ``min_weight_distance`` and 0 beyond.
The direction ``r̂_l`` (:func:`layer_directions`) comes from one source's table of directions ``[L, P, d]`` (per
residual layer and post-instruction position; for a training source the difference in class means, for the
``refined`` source its one gradient-refined direction at every entry, :mod:`.refine`) at one position: the same
``r̂`` at every layer, interpolated between the two residual layers around the fractional ``direction_index``
(``global``), or each layer's own direction (``per_layer``); optionally with its component along the harmless mean
removed (``orthogonalize``), so harmless activations are moved less.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from refusal_lab.core.config import ConfigModel
from refusal_lab.core.errors import RefusalLabError

COMPONENTS = ("attn", "mlp")
SITE_OF = {"attn": "attn_out", "mlp": "mlp_out"}


class Kernel(ConfigModel):
    """Tent-shaped ablation weights over layers for one component (see module docstring)."""

    max_weight: float = Field(ge=0)
    max_weight_position: float
    min_weight: float = Field(ge=0)
    min_weight_distance: float = Field(gt=0)

    def weights(self, n_layers: int) -> torch.Tensor:
        """``w [L]``: ``w_l = max + (min − max)·|l − position| / distance`` where ``|l − position| ≤ distance``, else 0."""
        distance = (torch.arange(n_layers, dtype=torch.float64) - self.max_weight_position).abs()
        w = self.max_weight + (self.min_weight - self.max_weight) * distance / self.min_weight_distance
        return torch.where(distance <= self.min_weight_distance, w, torch.zeros_like(w)).float()


class AbliterationParams(ConfigModel):
    """One point of the search space; with the direction table it fixes the edit exactly."""

    source: str = "mixed"
    position: int = -1
    direction_scope: Literal["global", "per_layer"] = "global"
    direction_index: float = 0.0
    orthogonalize: bool = False
    norm_preserving: bool = False  # the row-renormalised weight edit (:mod:`.edit`)
    attn: Kernel
    mlp: Kernel

    def weights(self, n_layers: int) -> dict[str, torch.Tensor]:
        return {c: getattr(self, c).weights(n_layers) for c in COMPONENTS}


def layer_directions(differences: torch.Tensor, harmless_means: torch.Tensor, params: AbliterationParams,
                     n_layers: int) -> torch.Tensor:
    """Unit directions ``r̂ [L, d]`` (float32), one per layer, from a direction table ``[L, P, d]`` (index ``i`` =
    the stream entering layer ``i``; for a training source ``μ⁺ − μ⁻`` of ``resid_pre``) and the harmless
    class means ``[L, P, d]``, at ``params.position``.

    ``v_i`` = the table's entry; with ``orthogonalize``, ``v_i ← v_i − (v_i·ĝ_i) ĝ_i`` for ``ĝ_i = μ⁻_i/‖μ⁻_i‖``.
    ``global``: ``r̂ = normalize(lerp(v̂_⌊x⌋, v̂_⌈x⌉, x − ⌊x⌋))`` for ``x = direction_index``, at every layer.
    ``per_layer``: layer ``l``'s writers use the stream they write into, ``v̂_{min(l+1, L−1)}``."""
    if differences.shape != harmless_means.shape or differences.ndim != 3:
        raise RefusalLabError(f"the direction table and the harmless means must both be [L, P, d], got "
                              f"{tuple(differences.shape)} and {tuple(harmless_means.shape)}")
    v = differences[:, params.position].double()
    harmless = harmless_means[:, params.position].double()
    if params.orthogonalize:
        g = harmless / harmless.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        v = v - (v * g).sum(-1, keepdim=True) * g
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    last = v.shape[0] - 1
    if params.direction_scope == "per_layer":
        return v[[min(l + 1, last) for l in range(n_layers)]].float()
    return interpolated_direction(v, params.direction_index).float().expand(n_layers, -1).clone()


def interpolated_direction(v: torch.Tensor, index: float) -> torch.Tensor:
    """``normalize(lerp(v̂_⌊x⌋, v̂_⌈x⌉, x − ⌊x⌋))`` for unit rows ``v̂ [L, d]`` and ``x = index`` clamped to
    ``[0, L − 1]``: a direction between two adjacent layers."""
    last = v.shape[0] - 1
    x = min(max(index, 0.0), float(last))
    low, frac = int(math.floor(x)), x - math.floor(x)
    r = torch.lerp(v[low], v[min(low + 1, last)], frac)
    return r / r.norm().clamp_min(1e-12)


def suggest(trial, n_layers: int, sources: list[str], positions: list[int],
            norm_preserving: tuple[bool, ...] | list[bool] = (False,)) -> AbliterationParams:
    """Sample :class:`AbliterationParams` from an Optuna trial. Every parameter is always sampled (multivariate TPE
    needs a fixed space), ``norm_preserving`` only where it offers both choices. Ranges, with ``L' = L − 1``:
    ``direction_index ∈ [0.2 L', 0.95 L']``, ``max_weight ∈ [0.5, 1.6]``, ``max_weight_position ∈ [0.3 L', L']``,
    ``min_weight`` a fraction ``[0, 1]`` of ``max_weight``, ``min_weight_distance ∈ [1, 0.8 L']``: heretic's ranges
    widened on every side."""
    last = n_layers - 1
    kernels = {}
    for c in COMPONENTS:
        top = trial.suggest_float(f"{c}.max_weight", 0.5, 1.6)
        kernels[c] = Kernel(max_weight=top,
                            max_weight_position=trial.suggest_float(f"{c}.max_weight_position", 0.3 * last, last),
                            min_weight=top * trial.suggest_float(f"{c}.min_weight_fraction", 0.0, 1.0),
                            min_weight_distance=trial.suggest_float(f"{c}.min_weight_distance", 1.0,
                                                                    max(1.0, 0.8 * last)))
    return AbliterationParams(
        source=trial.suggest_categorical("source", sources),
        position=trial.suggest_categorical("position", positions),
        direction_scope=trial.suggest_categorical("direction_scope", ["global", "per_layer"]),
        direction_index=trial.suggest_float("direction_index", 0.2 * last, 0.95 * last),
        orthogonalize=trial.suggest_categorical("orthogonalize", [False, True]),
        norm_preserving=(trial.suggest_categorical("norm_preserving", [False, True]) if len(set(norm_preserving)) > 1
                         else bool(norm_preserving[0])),
        **kernels)

