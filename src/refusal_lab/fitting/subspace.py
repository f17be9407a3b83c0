"""Multi-direction subspaces: stacking ranked directions by QR, and comparing subspaces by principal angles."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from refusal_lab.core.artifacts import Provenance, Subspace
from refusal_lab.core.errors import RefusalLabError


def stack_subspace(directions: Sequence[torch.Tensor] | torch.Tensor, provenance: Provenance,
                   tol: float = 1e-6) -> Subspace:
    """Orthonormal basis ``V [k', d]`` of ``span(a_1, …, a_k)`` for ordered directions ``a_i ∈ R^d``.

    ``A = [a_1 … a_k] ∈ R^{d×k} = QR`` (``torch.linalg.qr``, float64). Row ``i`` of ``V`` is ``Q[:, i]``: the part
    of ``a_i`` new relative to ``a_1 … a_{i−1}``, sign-fixed so ``V_i · a_i = R_ii > 0``. A column with
    ``|R_ii| ≤ tol·‖a_i‖`` (numerically in the span of the earlier ones) is dropped and the QR redone, because
    Householder QR fills a dependent column's slot with an arbitrary vector. ``scores[i] = |R_ii| / ‖a_i‖`` (the
    fraction of ``a_i`` that is new); kept input indices go to ``provenance.extra["stack_kept"]``. Float32 result.
    """
    rows = [torch.as_tensor(a).detach().reshape(-1).to("cpu", torch.float64) for a in directions]
    if not rows:
        raise RefusalLabError("stack_subspace needs at least one direction")
    d = rows[0].shape[0]
    if any(r.shape[0] != d for r in rows):
        raise RefusalLabError(f"directions have different sizes: {sorted({r.shape[0] for r in rows})}")
    provenance.check_hidden_size(d)
    norms = torch.stack([r.norm() for r in rows])
    if not torch.isfinite(norms).all():
        raise RefusalLabError("a direction contains NaN/inf; check the activations")
    keep = [i for i in range(len(rows)) if norms[i] > 0]
    while True:
        if not keep:
            raise RefusalLabError("all directions are zero; nothing to stack")
        q, r = torch.linalg.qr(torch.stack([rows[i] for i in keep], dim=1))
        rel = r.diagonal().abs() / norms[keep]
        bad = (rel <= tol).nonzero()
        if bad.numel() == 0:
            break
        del keep[int(bad[0])]
    basis = (q * torch.sign(r.diagonal())).T.contiguous()
    extra = {**provenance.extra, "stack_kept": keep, "stack_inputs": len(rows)}
    return Subspace(basis.float(), dataclasses.replace(provenance, extra=extra), rel.float())


def principal_angles(a: Subspace | torch.Tensor, b: Subspace | torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between ``span(A)`` and ``span(B)``, descending, ``[min(k_a, k_b)]``.

    ``cos θ_i = σ_i(V_A V_Bᵀ)`` for orthonormal bases ``V_A [k_a, d]``, ``V_B [k_b, d]`` (float64, clamped to [0, 1]).
    1 = shared direction, 0 = orthogonal.
    """
    va = (a.basis if isinstance(a, Subspace) else a).detach().to("cpu", torch.float64)
    vb = (b.basis if isinstance(b, Subspace) else b).detach().to("cpu", torch.float64)
    if va.ndim != 2 or vb.ndim != 2 or va.shape[1] != vb.shape[1]:
        raise RefusalLabError(f"cannot compare subspaces with bases {tuple(va.shape)} and {tuple(vb.shape)}")
    return torch.linalg.svdvals(va @ vb.T).clamp(0.0, 1.0)
