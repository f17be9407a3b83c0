"""The geometry of the residual stream around refusal: per-layer class statistics, 2-D frames and landing fractions.

Rows ``h ∈ R^d`` are activations (batches ``[n, d]``, per layer ``[n, L, d]``); ``μ₁`` / ``μ₀`` are the harmful /
harmless class means. Per layer :func:`residual_geometry` reports

- ``cos_means = μ₁·μ₀ / (‖μ₁‖‖μ₀‖)``, ``norm_harmful_mean = ‖μ₁‖``, ``norm_harmless_mean = ‖μ₀‖``,
  ``norm_refusal = ‖μ₁ − μ₀‖``;
- ``silhouette``: the mean over rows of ``s(i) = (b_i − a_i) / max(a_i, b_i)`` (``a_i``: mean euclidean distance to
  the other rows of its class, ``b_i``: to the rows of the other class; sklearn ``silhouette_score``);
- ``probe_accuracy``: the mean held-out accuracy over stratified k folds (shuffled, seeded) of a logistic-regression
  probe (L2, C = 1) on activations standardised per feature with the training fold's mean and deviation.

The fixed frame (:func:`fixed_frame`) is ``[r̂; p]``: the unit refusal direction and the first principal component of
the pooled, centred clean activations with their ``r̂`` component removed, so the DiM axis is exactly one axis of the
picture. The landing fraction of transformed harmful rows is ``1 − t(mean h)`` with ``t`` the cluster coordinate of
:mod:`refusal_lab.evaluation.landing`: 0 = still at the harmful centroid, 1 = on the harmless one, > 1 = beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from refusal_lab.evaluation.landing import cluster_coordinate, nearer_harmful
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.evaluation.stats import estimate
from refusal_lab.fitting.dim import cosine_matrix
from refusal_lab.fitting.probe import as_features, stratified_folds

GEOMETRY_COLUMNS = ("layer", "cos_means", "norm_harmful_mean", "norm_harmless_mean", "norm_refusal", "silhouette",
                    "probe_accuracy")


def _pooled(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``a [n, d]`` then ``b [m, d]`` as float64 ``[n + m, d]`` and labels ``[n + m]`` (1 = ``a``)."""
    x = np.concatenate([as_features(a, "harmful activations", 2), as_features(b, "harmless activations", 2)])
    return x, np.concatenate([np.ones(len(a), dtype=np.int64), np.zeros(len(b), dtype=np.int64)])


def cluster_silhouette(a: torch.Tensor, b: torch.Tensor) -> float:
    """Euclidean silhouette score of the two labelled clusters ``a [n, d]`` and ``b [m, d]`` (in [−1, 1])."""
    from sklearn.metrics import silhouette_score

    x, y = _pooled(a, b)
    return float(silhouette_score(x, y, metric="euclidean"))


def probe_accuracy(harmful: torch.Tensor, harmless: torch.Tensor, folds: int = 5, seed: int = 0) -> float:
    """Mean stratified ``folds``-fold held-out accuracy of a standardised logistic-regression probe (module doc)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _pooled(harmful, harmless)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    return float(cross_val_score(probe, x, y, cv=stratified_folds(y, folds, seed), scoring="accuracy").mean())


def residual_geometry(harmful: torch.Tensor, harmless: torch.Tensor, folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """One row per layer of ``harmful [n, L, d]`` / ``harmless [m, L, d]`` with :data:`GEOMETRY_COLUMNS`."""
    if harmful.ndim != 3 or harmless.ndim != 3 or harmful.shape[1:] != harmless.shape[1:]:
        raise RefusalLabError(f"residual geometry needs [n, L, d] and [m, L, d] activations, got "
                              f"{tuple(harmful.shape)} and {tuple(harmless.shape)}")
    rows = []
    for layer in range(harmful.shape[1]):
        a, b = harmful[:, layer].detach().double().cpu(), harmless[:, layer].detach().double().cpu()
        mu1, mu0 = a.mean(0), b.mean(0)
        rows.append({"layer": layer, "cos_means": float(cosine_matrix(mu1, mu0)[0, 0]),
                     "norm_harmful_mean": float(mu1.norm()), "norm_harmless_mean": float(mu0.norm()),
                     "norm_refusal": float((mu1 - mu0).norm()), "silhouette": cluster_silhouette(a, b),
                     "probe_accuracy": probe_accuracy(a, b, folds, seed)})
    return pd.DataFrame(rows, columns=list(GEOMETRY_COLUMNS))


def cross_layer_cosines(directions: torch.Tensor) -> np.ndarray:
    """``C[i, j] = cos(v_i, v_j)`` for per-layer directions ``[L, d]`` → float64 ``[L, L]`` (zero rows: 0)."""
    return cosine_matrix(directions, directions).double().numpy()


def _principal_axes(x: torch.Tensor, k: int) -> torch.Tensor:
    """The top ``k`` principal axes ``[k, d]`` of rows ``x [n, d]`` (centred first), each signed so that its
    largest-magnitude entry is positive (a deterministic choice of the sign SVD leaves open)."""
    centred = x - x.mean(0)
    axes = torch.linalg.svd(centred, full_matrices=False).Vh[:k]
    if axes.shape[0] < k or not torch.isfinite(axes).all():
        raise RefusalLabError(f"need at least {k + 1} activation rows with finite values for {k} principal axes")
    signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    return axes * signs


def fixed_frame(direction: torch.Tensor, harmful: torch.Tensor, harmless: torch.Tensor) -> torch.Tensor:
    """Orthonormal float64 rows ``[r̂; p] ∈ R^{2×d}``: ``r̂ = direction / ‖direction‖`` and ``p`` the first principal
    axis of the pooled clean rows ``harmful [n, d]``, ``harmless [m, d]`` after removing their ``r̂`` component
    (``h − (h·r̂) r̂``), so ``p ⟂ r̂``."""
    r = direction.detach().double().cpu().reshape(-1)
    if not float(r.norm()) > 0:
        raise RefusalLabError("the frame's direction is zero (or not finite); pass the DiM direction at its layer")
    r = r / r.norm()
    x = torch.from_numpy(_pooled(harmful, harmless)[0])
    p = _principal_axes(x - (x @ r)[:, None] * r, 1)[0]
    p = p - p.dot(r) * r  # exact orthogonality (p ⟂ r̂ up to rounding already)
    return torch.stack([r, p / p.norm()])


def pca_frame(harmful: torch.Tensor, harmless: torch.Tensor) -> torch.Tensor:
    """The top-2 principal axes ``[2, d]`` (float64, orthonormal) of the pooled clean rows ``harmful [n, d]`` and
    ``harmless [m, d]``; fit on clean activations, then :func:`project` transformed ones onto the same frame."""
    return _principal_axes(torch.from_numpy(_pooled(harmful, harmless)[0]), 2)


def project(h: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """Coordinates ``h @ frameᵀ``: rows ``[n, d]`` on a frame ``[k, d]`` → ``[n, k]`` (float64)."""
    return h.detach().double().cpu() @ frame.detach().double().cpu().T


@dataclass(frozen=True)
class Fraction:
    """How far transformed harmful rows moved towards the harmless centroid: ``value = 1 − t(mean h)`` with a 95 %
    percentile-bootstrap interval ``[low, high]`` over rows; ``nearer_harmless``: the share of rows nearer ``μ₀``."""

    value: float
    low: float
    high: float
    nearer_harmless: float


def landing_fraction(transformed_harmful: torch.Tensor, harmful_mean: torch.Tensor, harmless_mean: torch.Tensor,
                     seed: int = 0) -> Fraction:
    """The :class:`Fraction` of transformed harmful rows ``[n, d]`` against the clean means ``μ₁``, ``μ₀`` ``[d]``
    (``1 − t`` is affine in ``h``, so its row mean is ``1 − t`` of the mean row)."""
    if transformed_harmful.ndim != 2 or len(transformed_harmful) == 0:
        raise RefusalLabError(f"landing fraction needs transformed rows [n, d], got {tuple(transformed_harmful.shape)}")
    h = transformed_harmful.detach().cpu()
    moved = 1.0 - cluster_coordinate(h, harmful_mean.detach().cpu(), harmless_mean.detach().cpu())
    interval = estimate("landing_fraction", moved.numpy(), seed=seed)
    near = 1.0 - float(nearer_harmful(h, harmful_mean.detach().cpu(), harmless_mean.detach().cpu()).double().mean())
    return Fraction(interval.value, interval.low, interval.high, near)


__all__ = ["GEOMETRY_COLUMNS", "Fraction", "cluster_silhouette", "cross_layer_cosines", "fixed_frame",
           "landing_fraction", "pca_frame", "probe_accuracy", "project", "residual_geometry"]
