"""Linear probes for INLP: one classifier fit, stratified k-fold out-of-fold accuracy, and C chosen by k-fold CV.

Features ``Z [n, r]`` (rows = prompts), labels ``y [n]`` (1 = harmful). The out-of-fold (OOF) accuracy over folds
``F_1 … F_K`` (a partition of the rows, stratified by label) is ``(1/n) Σ_j #{i ∈ F_j : f_{−j}(z_i) = y_i}`` where
``f_{−j}`` is fit on the rows outside ``F_j``: every row is scored by a classifier that never saw it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from refusal_lab.core.errors import RefusalLabError

Folds = list[tuple[np.ndarray, np.ndarray]]


def as_features(x: torch.Tensor | np.ndarray, name: str, ndim: int) -> np.ndarray:
    """``x`` as a finite float64 array with ``ndim`` dimensions."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != ndim:
        raise RefusalLabError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise RefusalLabError(f"{name} contains NaN/inf; check the activations")
    return x


def as_labels(y: torch.Tensor | np.ndarray, n: int, name: str) -> np.ndarray:
    """``y`` as int64 0/1 labels (1 = harmful), ``n`` of them, both classes present."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y).reshape(-1)
    if y.shape[0] != n:
        raise RefusalLabError(f"{name} has {y.shape[0]} labels for {n} rows")
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise RefusalLabError(f"{name} must be binary 0/1 (1 = harmful), got values {sorted(values)}")
    if values != {0, 1}:
        raise RefusalLabError(f"{name} needs both harmful (1) and harmless (0) examples")
    return y.astype(np.int64)


def stratified_folds(y: np.ndarray, n_folds: int, seed: int) -> Folds:
    """``(train_rows, test_rows)`` per fold: sklearn ``StratifiedKFold(n_folds, shuffle=True, random_state=seed)``."""
    from sklearn.model_selection import StratifiedKFold

    smallest = int(np.bincount(y, minlength=2).min())
    if smallest < n_folds:
        raise RefusalLabError(f"{n_folds}-fold cross-validation needs at least {n_folds} harmful and {n_folds} "
                              f"harmless training prompts, got {smallest} in the smaller class; add prompts or lower "
                              "n_folds")
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros((len(y), 1)), y))


@dataclass
class ProbeFitter:
    """Fits one kind of linear classifier (``"logistic"`` or ``"svm"``) and counts fits and convergence failures."""

    classifier: str
    max_iter: int
    tol: float
    seed: int
    fits: int = 0
    not_converged: int = 0

    def fit(self, Z: np.ndarray, y: np.ndarray, C: float, iteration: int = 0):
        """A fitted sklearn classifier; its weight (``coef_``) points towards ``y = 1``."""
        from sklearn.exceptions import ConvergenceWarning

        if self.classifier == "logistic":
            from sklearn.linear_model import LogisticRegression

            clf = LogisticRegression(C=C, max_iter=self.max_iter, tol=self.tol)
        else:
            from sklearn.svm import LinearSVC

            # Primal (trust-region Newton): features are at most n after INLP's row-space reduction, and once
            # directions are removed the data stop being separable, where dual coordinate descent often stalls.
            clf = LinearSVC(C=C, max_iter=self.max_iter, tol=self.tol, random_state=self.seed + iteration, dual=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit(Z, y)
        self.fits += 1
        self.not_converged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        for w in caught:  # pass everything else through; convergence is summarised by the caller
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return clf

    def oof_accuracy(self, Z: np.ndarray, y: np.ndarray, folds: Folds, C: float, iteration: int = 0,
                     maps: Sequence[Callable[[np.ndarray], np.ndarray]] | None = None) -> tuple[float, list[np.ndarray]]:
        """Pooled out-of-fold accuracy and each fold classifier's weight ``[r]`` (one fit per fold). With ``maps``,
        fold ``j``'s training and held-out rows are first mapped by ``maps[j]`` (e.g. that fold's own projection)."""
        correct, fold_weights = 0, []
        for j, (train, test) in enumerate(folds):
            Z_train, Z_test = (Z[train], Z[test]) if maps is None else (maps[j](Z[train]), maps[j](Z[test]))
            clf = self.fit(Z_train, y[train], C, iteration)
            correct += int((clf.predict(Z_test) == y[test]).sum())
            fold_weights.append(np.asarray(clf.coef_, dtype=np.float64).reshape(-1))
        return correct / len(y), fold_weights

    def choose_C(self, Z: np.ndarray, y: np.ndarray, folds: Folds,
                 grid: Sequence[float]) -> tuple[float, list[float], list[np.ndarray]]:
        """The ``C`` in ``grid`` with the highest OOF accuracy (ties: the smallest ``C``, i.e. the strongest L2
        penalty), the OOF accuracy of every grid value (in grid order) and the chosen ``C``'s fold weights."""
        runs = [self.oof_accuracy(Z, y, folds, C) for C in grid]
        accuracies = [acc for acc, _ in runs]
        chosen = min(C for C, acc in zip(grid, accuracies) if acc == max(accuracies))
        return chosen, accuracies, runs[list(grid).index(chosen)][1]
