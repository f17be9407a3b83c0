"""LEACE (least-squares concept erasure, Belrose et al. 2023) via EleutherAI ``concept-erasure``.

The eraser is the affine map (row-vector convention, same as ``concept_erasure.LeaceEraser.__call__``)

    h ↦ h − ((h − b) Rᵀ) Lᵀ = b + (h − b) Pᵀ,      P = I − L R,

with ``L = proj_left [d, r]``, ``R = proj_right [r, d]``, ``b = bias [d]`` (the training mean). ``R L = I_r``, so
``P`` is idempotent but in general *oblique* (not symmetric). Among all affine maps after which the class means of
the training data coincide (so no linear classifier beats a constant predictor on it), LEACE changes the
activations least in mean squared distance. For a binary label ``r = 1``.

An eraser is fitted at one layer and on the activations of some post-instruction positions; it records both
(``fitted_layer`` = ``provenance.layer``, ``valid_positions``) and is valid only there: placing it at another layer
is refused (:mod:`refusal_lab.interventions.affine`). For multi-layer scopes fit one per layer
(:func:`fit_leace_per_layer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from refusal_lab.core.artifacts import AffineEraser, Provenance
from refusal_lab.core.errors import RefusalLabError


def fit_leace(X: torch.Tensor, y: torch.Tensor, provenance: Provenance, *, method: str = "leace",
              affine: bool = True, shrinkage: bool = True, constrain_cov_trace: bool = True,
              svd_tol: float = 0.01) -> AffineEraser:
    """Fit LEACE on ``X [n, d]`` with labels ``y [n]`` (binary 0/1, 1 = harmful) or ``[n, c]`` (e.g. one-hot).

    Fitted in float64 with ``concept_erasure.LeaceFitter`` (keyword options passed through); the result is stored
    as float32 with zero-weight components dropped (``r`` = effective rank). ``affine=False`` stores a zero bias.
    """
    from concept_erasure import LeaceFitter

    if X.ndim != 2:
        raise RefusalLabError(f"LEACE needs activations [n, d], got shape {tuple(X.shape)}")
    n, d = X.shape
    provenance.check_hidden_size(d)
    x = X.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise RefusalLabError("LEACE: the activations contain NaN/inf")
    z = y.detach().to("cpu", torch.float64).reshape(n, -1)
    if z.shape[1] == 1 and z.unique().numel() < 2:
        raise RefusalLabError("LEACE needs both harmful (1) and harmless (0) examples")

    eraser = LeaceFitter.fit(x, z, method=method, affine=affine, shrinkage=shrinkage,
                             constrain_cov_trace=constrain_cov_trace, svd_tol=svd_tol).eraser
    left, right = eraser.proj_left, eraser.proj_right
    weight = left.norm(dim=0) * right.norm(dim=1)
    keep = weight > weight.max().clamp_min(torch.finfo(torch.float64).tiny) * 1e-10
    bias = eraser.bias if eraser.bias is not None else torch.zeros(d, dtype=torch.float64)
    return AffineEraser(left[:, keep].float().contiguous(), right[keep].float().contiguous(), bias.float(), provenance)


def _rows(acts: torch.Tensor, layer: int, position: int | None) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``acts [n, L, P, d]`` at ``layer``: ``[n, d]`` at one position (negative, −P..−1) or, for ``None``, all P
    positions pooled as ``[n·P, d]`` (prompt-major: row ``i·P + p``); and the positions used."""
    if acts.ndim != 4:
        raise RefusalLabError(f"per-layer fits need activations [n, L, P, d], got shape {tuple(acts.shape)}")
    n, n_layers, n_positions, d = acts.shape
    if not 0 <= layer < n_layers:
        raise RefusalLabError(f"layer {layer} is out of range; the activations have layers 0..{n_layers - 1}")
    if position is None:
        return acts[:, layer].reshape(n * n_positions, d), tuple(range(-n_positions, 0))
    if not -n_positions <= position < 0:
        raise RefusalLabError(f"position {position} is out of range; post-instruction positions are "
                              f"{-n_positions}..-1")
    return acts[:, layer, position], (position,)


def fit_leace_per_layer(acts: torch.Tensor, y: torch.Tensor, provenance: Provenance,
                        layers: Sequence[int] | None = None, position: int | None = None,
                        skip_degenerate: bool = False, **options) -> dict[int, AffineEraser]:
    """One LEACE eraser per layer (for multi-layer scopes: layer ``j``'s eraser is applied at layer ``j`` only).

    ``acts [n, L, P, d]`` (``resid_pre`` at the post-instruction positions), ``y [n]`` (1 = harmful); ``layers``
    default all L. ``position`` (negative, −P..−1) fits each eraser at that position; ``None`` pools all P
    positions (each prompt contributes P rows with its label). ``provenance`` is the template: each eraser gets
    ``layer = j``, ``position`` and ``extra["valid_positions"]`` (the positions fitted on). ``options`` go to
    :func:`fit_leace`. ``skip_degenerate`` leaves out layers whose fit fails (e.g. identical activations at a
    template token: nothing there to erase) instead of raising.
    """
    y = y.reshape(-1)
    if y.shape[0] != acts.shape[0]:
        raise RefusalLabError(f"{acts.shape[0]} activation rows but {y.shape[0]} labels")
    erasers = {}
    for layer in range(acts.shape[1]) if layers is None else layers:
        X, positions = _rows(acts, layer, position)
        labels = y.repeat_interleave(len(positions)) if position is None else y
        fitted = replace(provenance, layer=layer, position=position,
                         extra={**provenance.extra, "valid_positions": list(positions)})
        try:
            erasers[layer] = fit_leace(X, labels, fitted, **options)
        except RefusalLabError:
            if not skip_degenerate:
                raise
    return erasers


def per_layer_means(acts: torch.Tensor, layers: Sequence[int] | None = None,
                    position: int | None = None) -> dict[int, torch.Tensor]:
    """Each layer's training mean ``[d]`` (float32) from ``acts [n, L, P, d]``, at one position or pooled over
    all (as in :func:`fit_leace_per_layer`): the per-layer centres of a centred INLP map
    (``build_intervention(..., center=True, centers=...)``)."""
    return {layer: _rows(acts, layer, position)[0].double().mean(0).float()
            for layer in (range(acts.shape[1]) if layers is None else layers)}
