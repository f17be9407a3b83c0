"""Interventions as maps on residual-stream row vectors ``h ∈ R^d`` (batch ``[..., d]``), model-agnostic.

* :class:`Projection` — ``h ↦ h − α (h Vᵀ) V = h P_α`` with ``P_α = αP + (1−α)I`` and ``P = I − VᵀV`` for an
  orthonormal ``V [k, d]``. α = 1 is an orthogonal projection: directional ablation (k = 1), INLP nullspace
  projection (V = full INLP basis), rank-k projection (V = V_k), subspace ablation (V = QR basis). α = 2 reflects
  across the nullspace (counterfactual flip). Computed in low-rank form, never as a dense ``d × d`` matmul.
* :class:`Addition` — ``h ↦ h + s·v`` (ActAdd; s > 0 induces refusal with the DiM vector, s < 0 bypasses).

``stacking`` says whether a map may be re-applied to a state it already changed: ``"each"`` (idempotent
projections, additions) may be applied at every hook point; ``"once"`` (non-idempotent linear maps such as flips)
must not. Where a ``"once"`` map goes — the flip variants ``input`` and ``writes`` — is the placement of its
:class:`~refusal_lab.interventions.hooks.Intervention`.

Affine maps (:mod:`refusal_lab.interventions.affine`, the LEACE eraser) also carry ``fitted_layer`` (the layer
they were fitted at; the only layer they may be placed at) and ``valid_positions`` (the post-instruction positions,
negative, they were fitted on). The maps here are linear (through the origin) and carry neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch

Stacking = Literal["each", "once"]


class Transform(Protocol):
    """A map on ``h [..., d]`` (returns the input dtype); see the module docstring for the attributes."""

    stacking: Stacking
    idempotent: bool

    def __call__(self, h: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Projection:
    """``h ↦ h − α (h Vᵀ) V`` for orthonormal rows ``V [k, d]``; see the module docstring."""

    basis: torch.Tensor
    alpha: float = 1.0

    @property
    def idempotent(self) -> bool:
        return self.alpha == 1.0

    @property
    def stacking(self) -> Stacking:
        return "each" if self.idempotent else "once"

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        basis = self.basis.to(device=h.device, dtype=torch.float32)
        coefficients = h.float() @ basis.T  # [..., k]
        return (h.float() - self.alpha * coefficients @ basis).to(h.dtype)


@dataclass
class Addition:
    """``h ↦ h + scale · vector`` (activation addition)."""

    vector: torch.Tensor
    scale: float = 1.0
    idempotent: bool = False
    stacking: Stacking = "each"

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return h + (self.scale * self.vector).to(device=h.device, dtype=h.dtype)
