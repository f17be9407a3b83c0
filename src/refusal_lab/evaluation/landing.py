"""Where activations land relative to the harmful and harmless clusters.

For the class means ``μ₁`` (harmful) and ``μ₀`` (harmless) of the *clean* train activations at one layer and
post-instruction position, a row vector ``h ∈ R^d`` has the cluster coordinate

    t(h) = (h − μ₀)·(μ₁ − μ₀) / ‖μ₁ − μ₀‖²

(its projection onto the line through both means: 0 at the harmless mean, 1 at the harmful mean), and it is
*nearer the harmful cluster* when ``‖h − μ₁‖ < ‖h − μ₀‖``. A map that moves harmful prompts "into the harmless
cluster" takes their mean t from ≈ 1 to ≈ 0 and their nearer-harmful fraction from ≈ 1 to ≈ 0.

:func:`landing_items` collects ``resid_pre`` of every layer at one position with interventions applied (their hooks are
registered first, so a map at layer ℓ's input is already in what layer ℓ's capture sees) and summarises each layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.interventions.hooks import Intervention, apply_interventions
from refusal_lab.models.activations import collect_activations


def has_axis(harmful_mean: torch.Tensor, harmless_mean: torch.Tensor) -> bool:
    """Whether the two means are apart (``‖μ₁ − μ₀‖ > 10⁻⁶ ‖μ₀‖``; not so for a template token at layer 0)."""
    return bool((harmful_mean - harmless_mean).double().norm() > 1e-6 * harmless_mean.double().norm())


def cluster_coordinate(h: torch.Tensor, harmful_mean: torch.Tensor, harmless_mean: torch.Tensor) -> torch.Tensor:
    """``t(h)`` for rows ``h [n, d]`` and means ``[d]`` → ``[n]`` (float64; see module docstring)."""
    if not has_axis(harmful_mean, harmless_mean):
        raise RefusalLabError("the harmful and harmless means coincide at this layer and position: no cluster axis")
    gap = (harmful_mean - harmless_mean).double()
    return (h.double() - harmless_mean.double()) @ gap / gap.dot(gap)


def nearer_harmful(h: torch.Tensor, harmful_mean: torch.Tensor, harmless_mean: torch.Tensor) -> torch.Tensor:
    """``‖h − μ₁‖ < ‖h − μ₀‖`` per row of ``h [n, d]`` → bool ``[n]``."""
    h = h.double()
    return (h - harmful_mean.double()).norm(dim=-1) < (h - harmless_mean.double()).norm(dim=-1)


@dataclass
class Landing:
    """Per layer (resid_pre of layer ``l``): the mean cluster coordinate and the fraction nearer the harmful mean."""

    coordinate: list[float]
    nearer_harmful: list[float]


def landing_items(lm, prompts: Sequence[str], interventions: Sequence[Intervention], harmful_mean: torch.Tensor,
                  harmless_mean: torch.Tensor, position: int,
                  batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per prompt and layer, where ``prompts``' activations at ``position`` (negative, post-instruction) land under
    ``interventions`` against the clean class means ``[L, P, d]``: ``(t [n, L], nearer_harmful [n, L])`` in float64
    (nearer as 0/1), NaN at a layer where the two means coincide."""
    with apply_interventions(lm, interventions):
        acts = collect_activations(lm, list(prompts), batch_size, use_cache=False, description="landing").acts
    n, n_layers = acts.shape[0], acts.shape[1]
    coordinate = torch.full((n, n_layers), math.nan, dtype=torch.float64)
    nearer = torch.full((n, n_layers), math.nan, dtype=torch.float64)
    for layer in range(n_layers):
        h, mu1, mu0 = acts[:, layer, position], harmful_mean[layer, position], harmless_mean[layer, position]
        if has_axis(mu1, mu0):
            coordinate[:, layer] = cluster_coordinate(h, mu1, mu0)
            nearer[:, layer] = nearer_harmful(h, mu1, mu0).double()
    return coordinate, nearer


def landing(lm, prompts: Sequence[str], interventions: Sequence[Intervention], harmful_mean: torch.Tensor,
            harmless_mean: torch.Tensor, position: int, batch_size: int = 32) -> Landing:
    """:func:`landing_items` averaged over the prompts: the mean ``t`` and the nearer-harmful fraction per layer."""
    coordinate, nearer = landing_items(lm, prompts, interventions, harmful_mean, harmless_mean, position, batch_size)
    return Landing(coordinate.mean(0).tolist(), nearer.mean(0).tolist())


__all__ = ["Landing", "cluster_coordinate", "has_axis", "landing", "landing_items", "nearer_harmful"]
