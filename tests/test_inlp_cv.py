"""INLP reads the training split only: C by k-fold CV, cross-fitted out-of-fold accuracies (synthetic, fast)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from refusal_lab.core.artifacts import Provenance
from refusal_lab.fitting.inlp import INLPConfig, fit_inlp, inlp_per_layer

GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def nuisance(seed: int, n: int = 200, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The label lives in x0 − x1: both carry one shared nuisance ν of std 10, x0 also ±1 (+ small noise). The
    class-mean difference points along x0 only, which a strongly L2-penalised (small C) classifier follows and which
    ν swamps; a weakly penalised one learns x0 − x1 and cancels ν."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    nu = torch.randn(n, generator=g, dtype=torch.float64) * 10
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    X[:, 0] = (2 * y - 1) + nu + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    X[:, 1] = nu
    return X, y


def hand_standardise(X: torch.Tensor) -> np.ndarray:
    Z = X.double().numpy() - X.double().numpy().mean(axis=0)
    return Z / np.sqrt((Z**2).mean())


def hand_folds(y: torch.Tensor, k: int = 4, seed: int = 0):
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros((len(y), 1)), y.numpy()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cv_picks_a_large_C_when_the_mean_difference_misleads(seed):
    X, y = nuisance(seed)
    r = fit_inlp(X, y, INLPConfig(stop="fixed", max_iterations=1))
    assert r.cv_accuracies[0] < 0.7 and max(r.cv_accuracies) >= 0.97, r.cv_accuracies
    assert r.C in (1.0, 10.0)
    assert r.first_accuracy == max(r.cv_accuracies)


def test_cv_ties_pick_the_smallest_C():
    """Classes 20σ apart: every C classifies every held-out row correctly, so the tie rule picks the smallest C."""
    g = torch.Generator().manual_seed(4)
    y = torch.arange(80) % 2
    X = torch.randn(80, 6, generator=g, dtype=torch.float64) + 20.0 * y[:, None]
    r = fit_inlp(X, y, INLPConfig(stop="fixed", max_iterations=1))
    assert r.cv_accuracies == [1.0] * 5 and r.C == 1e-3


def test_cv_accuracies_match_a_hand_computed_4_fold_cv():
    """d < n (no row-space reduction): the pooled OOF accuracy per C is, by definition, Σ_folds hits / n with
    LogisticRegression(C) fit on Z of the other folds, Z = (X − μ)/RMS; C = the smallest argmax."""
    X, y = nuisance(7, n=60, d=5)
    r = fit_inlp(X, y, INLPConfig(stop="fixed", max_iterations=1))
    Z, folds = hand_standardise(X), hand_folds(y)
    hand = []
    for C in GRID:
        hits = sum(int((LogisticRegression(C=C, max_iter=1000).fit(Z[tr], y[tr]).predict(Z[te]) == y[te].numpy())
                       .sum()) for tr, te in folds)
        hand.append(hits / 60)
    assert r.cv_accuracies == hand
    assert r.C == GRID[hand.index(max(hand))]


@pytest.mark.parametrize("C", [0.5, None])
def test_second_accuracy_is_cross_fitted_by_hand(C):
    """Classifier 2's OOF accuracy: fold j fits w_1 on its own training rows, projects both its training and its
    held-out rows by I − ŵ_1ŵ_1ᵀ, fits classifier 2 on the projected training rows and scores the held-out rows.
    (C = None: the same with the C the search chose, whose fold fits seed the fold projections.)"""
    g = torch.Generator().manual_seed(8)
    y = torch.arange(120) % 2
    X = torch.randn(120, 6, generator=g, dtype=torch.float64) * torch.tensor([1.0, 1, 2, 3, 1, 1], dtype=torch.float64)
    X[:, :2] += (2 * y[:, None] - 1).double() * torch.tensor([1.0, 0.6], dtype=torch.float64)
    r = fit_inlp(X, y, INLPConfig(C=C, stop="fixed", max_iterations=2, tol=1e-10))
    C, Z, hits1, hits2 = r.C, hand_standardise(X), 0, 0
    for tr, te in hand_folds(y):
        c1 = LogisticRegression(C=C, max_iter=1000, tol=1e-10).fit(Z[tr], y[tr])
        hits1 += int((c1.predict(Z[te]) == y[te].numpy()).sum())
        w = c1.coef_.reshape(-1) / np.linalg.norm(c1.coef_)
        project = lambda A: A - np.outer(A @ w, w)  # noqa: E731
        c2 = LogisticRegression(C=C, max_iter=1000, tol=1e-10).fit(project(Z[tr]), y[tr])
        hits2 += int((c2.predict(project(Z[te])) == y[te].numpy()).sum())
    assert r.oof_accuracies[:2] == [hits1 / 120, hits2 / 120]
    assert r.oof_accuracies[0] > r.oof_accuracies[1]


def test_residual_accuracy_is_not_biased_below_chance():
    """n < d, one planted direction: after removing it, the held-out signal is gone. A held-out score after a
    projection fit on *all* rows would sit far below chance (each fold's complement carries minus the fold's own
    mean difference); the cross-fitted one stays near chance."""
    g = torch.Generator().manual_seed(9)
    y = torch.arange(128) % 2
    X = torch.randn(128, 300, generator=g, dtype=torch.float64) + 1.5 * y[:, None].double() * (torch.arange(300) == 0)
    r = fit_inlp(X, y, INLPConfig(stop="fixed", max_iterations=1))
    assert r.first_accuracy > 0.7
    assert 0.35 <= r.residual_accuracy <= 0.7, r.residual_accuracy
    # the biased estimate this avoids, by hand: project every row by the all-rows w_1, then 4-fold OOF
    Z = hand_standardise(X)
    w = LogisticRegression(C=r.C, max_iter=1000).fit(Z, y).coef_.reshape(-1)
    Zp = Z - np.outer(Z @ w, w) / (w @ w)
    naive = sum(int((LogisticRegression(C=r.C, max_iter=1000).fit(Zp[tr], y[tr]).predict(Zp[te]) == y[te].numpy())
                    .sum()) for tr, te in hand_folds(y)) / 128
    assert naive < 0.3, naive


def test_explicit_C_skips_the_search_and_fits_are_counted():
    """Cost: n_folds fits per accuracy (k + 1 of them), one full fit per kept direction; the C search costs
    n_folds·|grid| and its runs at the chosen C stand in for iteration 1's fold fits."""
    X, y = nuisance(3)
    fixed = fit_inlp(X, y, INLPConfig(C=2.0, stop="fixed", max_iterations=3))
    assert fixed.C == 2.0 and fixed.cv_accuracies is None and fixed.rank == 3
    assert fixed.n_fits == 4 * (3 + 1) + 3
    searched = fit_inlp(X, y, INLPConfig(stop="fixed", max_iterations=3))
    assert searched.n_fits == 4 * 5 + 4 * 3 + 3
    assert searched.oof_accuracies[0] == searched.cv_accuracies[GRID.index(searched.C)]


def test_no_validation_split_anywhere():
    """The API takes no validation arrays (an old positional call fails loudly), and the recorded accuracies name
    the split they come from."""
    X, y = nuisance(5)
    assert [p for p in inspect.signature(fit_inlp).parameters] == ["X_train", "y_train", "config"]
    assert "X_val" not in inspect.signature(inlp_per_layer).parameters
    with pytest.raises((TypeError, AttributeError)):
        fit_inlp(X, y, X, y)
    r = fit_inlp(X, y, INLPConfig(max_iterations=3))
    extra = r.to_subspace(Provenance("m", "inlp", 8)).provenance.extra["inlp"]
    assert extra["first_accuracy"] == r.first_accuracy == r.oof_accuracies[0]
    assert extra["accuracy_split"] == "train, 4-fold stratified out-of-fold"
    assert extra["C"] == r.C and extra["cv_accuracies"] == r.cv_accuracies
    assert extra["config"]["C"] is None and extra["config"]["C_grid"] == list(GRID)

