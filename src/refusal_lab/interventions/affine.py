"""Affine maps as interventions: the LEACE eraser and projections / reflections through a centre.

An affine map is fitted on the activations of one layer (at one post-instruction position, or pooled over
several) and is valid only there:

* Layers. Each map records ``fitted_layer``; :class:`~refusal_lab.interventions.hooks.Intervention` refuses to
  place it at any other layer. Multi-layer scopes use one fit per layer: the builders below take ``{layer: map}``
  and place layer ``j``'s own map at layer ``j`` only.
* Positions. Each map records ``valid_positions``: the post-instruction positions (negative, counted from the end
  of the prompt) whose activations it was fitted on. The hooks nevertheless apply it at *every* position of the
  sequence — every prompt token and every generated token. Only at ``valid_positions`` does the map do what it
  was fitted to do (e.g. LEACE's equal class means); elsewhere it is an extrapolation.

LEACE. The eraser ``E(h) = h − ((h − b) Rᵀ) Lᵀ`` (:class:`~refusal_lab.fitting.leace.AffineEraser`) is fit on
residual *states*: the right map at ``resid_pre``. A block's *write* ``Δ`` (``attn_out`` / ``mlp_out``) is a
difference of states, so it gets the linear part ``Δ ↦ Δ − (Δ Rᵀ) Lᵀ`` (:class:`LinearPart`). With both at layer
``j``, the residual after layer ``j`` is ``E_j(h + Δ_attn + Δ_mlp)``: it stays on ``{h : R_j (h − b_j) = 0}``.

Centred projection. :class:`CenteredProjection` ``h ↦ c + (h − c) P_α`` projects (α = 1) or reflects (α = 2)
through the layer's training mean ``c`` instead of the origin; block writes get the linear ``Projection(V, α)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from refusal_lab.interventions.base import Projection
from refusal_lab.core.vocabulary import SITES, Placement, Site
from refusal_lab.interventions.hooks import Intervention


@dataclass
class LinearPart:
    """``h ↦ h − (h Rᵀ) Lᵀ``: the linear part of an affine eraser (for block writes). Idempotent (``R L = I``).
    Fitted with its eraser, so placed only at the eraser's layer."""

    eraser: object  # AffineEraser (anything with proj_left [d, r], proj_right [r, d], fitted_layer)

    idempotent: ClassVar[bool] = True
    stacking: ClassVar[str] = "each"

    @property
    def fitted_layer(self) -> int | None:
        return self.eraser.fitted_layer

    @property
    def valid_positions(self) -> tuple[int, ...] | None:
        return self.eraser.valid_positions

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(h.dtype, torch.float32)
        left = self.eraser.proj_left.to(h.device, dtype)
        right = self.eraser.proj_right.to(h.device, dtype)
        x = h.to(dtype)
        return (x - (x @ right.T) @ left.T).to(h.dtype)


def eraser_interventions(erasers: Mapping[int, object], sites: Sequence[Site] = SITES,
                         name: str = "leace") -> list[Intervention]:
    """For every ``layer → eraser``: the eraser at ``resid_pre`` of that layer and its :class:`LinearPart` at
    that layer's write sites (an eraser fitted at another layer is refused by ``Intervention``)."""
    writes = tuple(s for s in sites if s != "resid_pre")
    result = []
    for layer, eraser in sorted(erasers.items()):
        if "resid_pre" in sites:
            result.append(Intervention(eraser, (layer,), ("resid_pre",), name=name))
        if writes:
            result.append(Intervention(LinearPart(eraser), (layer,), writes, name=f"{name}-writes"))
    return result


@dataclass
class CenteredProjection:
    """``h ↦ h − α ((h − c) Vᵀ) V = c + (h − c) P_α``: the projection / reflection through the point ``c`` (the
    training mean at ``fitted_layer``, e.g. INLP's) instead of through the origin.

    Residual activations carry a large common offset, part of which lies in span(V); the linear ``Projection``
    removes (α = 1) or negates (α = 2) that part too, so a linear flip sends *both* classes past the harmless
    cluster. Reflecting through ``c`` swaps the clusters instead. Idempotent only for α = 1.
    """

    basis: torch.Tensor
    alpha: float
    center: torch.Tensor
    fitted_layer: int | None
    valid_positions: tuple[int, ...] | None = None

    @property
    def idempotent(self) -> bool:
        return self.alpha == 1.0

    @property
    def stacking(self) -> str:
        return "each" if self.idempotent else "once"

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        basis = self.basis.to(device=h.device, dtype=torch.float32)
        x = h.float()
        coefficients = (x - self.center.to(device=h.device, dtype=torch.float32)) @ basis.T
        return (x - self.alpha * coefficients @ basis).to(h.dtype)


def centered_interventions(maps: Mapping[int, CenteredProjection], layers: Sequence[int],
                           sites: Sequence[Site] = SITES, placement: Placement = "each",
                           name: str = "centered") -> list[Intervention]:
    """A centred map over ``layers``; ``maps`` holds the :class:`CenteredProjection` to place at each layer's
    ``resid_pre`` (all with the same ``V`` and α), block writes get the linear ``Projection(V, α)``.

    * ``each`` (projections, α = 1): ``maps[j]`` at ``resid_pre`` of every scoped ``j``, the linear part at every
      scoped write — every layer needs its own centre.
    * ``input`` / ``writes`` (the flip variants): ``maps[first]`` once at ``resid_pre`` of the first scoped layer;
      ``writes`` also reflects every scoped write with the linear part. Only the first layer's centre is used.
    """
    layers = tuple(sorted(set(layers)))
    first = maps[layers[0]]
    if placement == "input":
        return [Intervention(first, layers, tuple(sites), name=name, placement="input")]
    result = []
    if "resid_pre" in sites:
        pieces = [(j, (j,)) for j in layers] if placement == "each" else [(layers[0], layers)]
        result += [Intervention(maps[j], at, ("resid_pre",), name=name, placement="each" if placement == "each"
                                else "input") for j, at in pieces]
    writes = tuple(s for s in sites if s != "resid_pre")
    if writes:
        result.append(Intervention(Projection(first.basis, first.alpha), layers, writes, name=f"{name}-writes",
                                   placement=placement))
    return result
