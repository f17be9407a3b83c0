"""Difference-in-means (DiM) directions and cosine comparisons.

``v = μ_harmful − μ_harmless ∈ R^d`` (unnormalised; ActAdd adds ``k·v``, ablation uses ``v/‖v‖``).
Means may arrive in float64 (accumulated sums); the difference is taken in float64 and returned as float32.
"""

from __future__ import annotations

import torch

from refusal_lab.core.artifacts import Direction, Provenance
from refusal_lab.core.errors import RefusalLabError


def difference_in_means(harmful_mean: torch.Tensor, harmless_mean: torch.Tensor, provenance: Provenance) -> Direction:
    """``v = harmful_mean − harmless_mean``; inputs ``[d]``, returns a float32 :class:`Direction`.

    Raises :class:`RefusalLabError` if the shapes disagree with each other or with ``provenance.hidden_size``, or if
    the means are identical (e.g. layer 0 at a template token: the embedding is the same for every prompt).
    """
    if harmful_mean.ndim != 1 or harmful_mean.shape != harmless_mean.shape:
        raise RefusalLabError(
            f"difference in means needs two [d] vectors of the same size, got {tuple(harmful_mean.shape)} and "
            f"{tuple(harmless_mean.shape)}"
        )
    provenance.check_hidden_size(harmful_mean.shape[0])
    v = (harmful_mean.detach().double().cpu() - harmless_mean.detach().double().cpu()).float()
    if torch.isfinite(v).all() and float(v.norm()) == 0.0:
        raise RefusalLabError(
            f"harmful and harmless means are identical at layer {provenance.layer}, position {provenance.position}; "
            "pick another layer or position"
        )
    return Direction(v, provenance)


def dim_candidates(harmful_means: torch.Tensor, harmless_means: torch.Tensor) -> torch.Tensor:
    """All candidate DiM vectors: ``[L, P, d] − [L, P, d] → [L, P, d]`` (float32; computed in float64).

    Candidates may be zero (identical means); :func:`cosine_matrix` maps those to cosine 0.
    """
    if harmful_means.shape != harmless_means.shape:
        raise RefusalLabError(
            f"harmful and harmless means differ in shape: {tuple(harmful_means.shape)} vs {tuple(harmless_means.shape)}"
        )
    return (harmful_means.detach().double() - harmless_means.detach().double()).float()


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise cosines ``C[i, j] = a_i·b_j / (‖a_i‖‖b_j‖)``: ``[m, d] × [n, d] → [m, n]`` (float32, via float64).

    1-d inputs are treated as a single row. A zero row has cosine 0 with everything (not NaN), so heatmaps over
    layers stay plottable.
    """
    a = torch.atleast_2d(a.detach()).double()
    b = torch.atleast_2d(b.detach()).double()
    if a.shape[-1] != b.shape[-1]:
        raise RefusalLabError(f"cannot compare vectors of size {a.shape[-1]} with vectors of size {b.shape[-1]}")

    def _normalise(x: torch.Tensor) -> torch.Tensor:
        norms = x.norm(dim=-1, keepdim=True)
        return torch.where(norms > 0, x / norms.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))

    return (_normalise(a) @ _normalise(b).T).clamp(-1.0, 1.0).float()
