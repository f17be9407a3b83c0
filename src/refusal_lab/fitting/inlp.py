"""Iterative Nullspace Projection (INLP; Ravfogel et al., 2020), fit on the training split only.

Iteration ``i = 1, 2, …`` trains a linear classifier (weight ``w_i ∈ R^d``) to predict harmful (``y = 1``) vs
harmless (``y = 0``) from the *projected* activations ``X P_{i−1}`` (``P_0 = I``). Its weight is Gram–Schmidt
orthogonalised against the current basis and normalised, giving row ``i`` of ``V [k, d]``. The rows of ``V`` are an
orthonormal basis of the row space of ``I − P``, hence ``P_i = I − V_iᵀ V_i`` (the projection onto the intersection
of the classifiers' nullspaces) without any per-iteration SVD.

Scaling. Residual-stream activations have large norms and a few huge outlier features. Before fitting, features are
centred by the training mean ``μ`` and divided by one global scalar ``s = ‖X − μ‖_F / √(n d)`` (RMS feature scale).
A global scalar keeps every weight a direction in the *original* coordinate system (the weight in original
coordinates is ``w / s``, parallel to ``w``). Per-feature standardisation is deliberately not offered: with a scale
vector ``σ`` the original-space weight is ``w / σ`` and the orthogonal projection in standardised space is an
oblique map in the original space.

Held-out accuracy without a validation split (cross-fitting). The training rows are split once into ``n_folds``
stratified folds ``F_j`` (seeded). Alongside the INLP run on all rows, fold ``j`` runs its own INLP in lockstep on the
rows outside ``F_j`` (same ``C``) and scores ``F_j`` with its classifier ``i`` after its own ``P^{(j)}_{i−1}``; the
pooled accuracy over folds is classifier ``i``'s out-of-fold (OOF) accuracy. Every held-out row is scored by
a projection and a classifier that never saw it. (Scoring held-out folds after a projection fit on *all* rows is
biased far below chance: removing the pooled mean difference leaves each fold's complement with minus that fold's
own difference.) The label-free centring, scale and row-space basis use all training rows. No other split is
read, so selection may use the validation split without INLP having seen it.

``C``. ``config.C = None`` picks ``C`` from ``config.C_grid`` by OOF accuracy of the *first* classifier (ties: the
smallest ``C``) and reuses it for every iteration; the first classifier's OOF accuracy is then the maximum over the
grid (slightly optimistic: a winner among a handful of values). An explicit ``config.C`` skips the search.

Stop rule. ``stop="fixed"`` trains exactly ``max_iterations`` classifiers. ``stop="chance"`` stops *before* adding
the direction of a classifier whose OOF accuracy is ``≤ max(majority prior, 0.5) + epsilon``: its weight is fit to
noise, so removing it would damage the representation without erasing anything. Either way the OOF accuracy on the
final projection is kept as ``residual_accuracy`` (the linearly decodable signal INLP left behind).

Row order (rank-k). ``I − P`` is a projector, so its SVD orders nothing; rank-k uses a named order of the rows of
``V`` (``"iteration"`` or ``"dim_share"``, :mod:`.inlp_order`), chosen in :meth:`INLPResult.to_subspace`.

Everything is computed in float64; the returned tensors are float32 on CPU (what a save/load round trip gives).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from refusal_lab.core.artifacts import Direction, Provenance, Subspace
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.fitting.inlp_order import dim_shares, reorder_inlp
from refusal_lab.fitting.probe import ProbeFitter, as_features, as_labels, stratified_folds

_ArrayLike = torch.Tensor | np.ndarray


@dataclass
class INLPConfig:
    """Settings for :func:`fit_inlp`.

    ``classifier``: ``"logistic"`` (sklearn ``LogisticRegression``, lbfgs, L2) or ``"svm"`` (``LinearSVC``).
    ``C``: inverse L2 strength on the globally scaled features; ``None`` chooses it from ``C_grid`` by
    ``n_folds``-fold CV on the training split (first classifier only). ``n_folds`` also defines the OOF accuracies.
    ``max_iterations``: at most this many directions. ``stop``: ``"chance"`` or ``"fixed"`` (see module docstring).
    ``epsilon``: margin above chance. ``seed``: fold split and ``LinearSVC`` seed. ``max_iter_solver``/``tol``:
    solver iteration cap / tolerance per classifier. ``standardize``: centre by the train mean and divide by one
    global RMS scale before fitting (recommended; the directions are in original coordinates either way).
    """

    classifier: Literal["logistic", "svm"] = "logistic"
    C: float | None = None
    C_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    n_folds: int = 4
    max_iterations: int = 20
    stop: Literal["fixed", "chance"] = "chance"
    epsilon: float = 0.02
    seed: int = 0
    max_iter_solver: int = 1000
    tol: float = 1e-4
    standardize: bool = True

    def __post_init__(self) -> None:
        if self.classifier not in ("logistic", "svm"):
            raise RefusalLabError(f"INLP classifier must be 'logistic' or 'svm', got {self.classifier!r}")
        if self.stop not in ("fixed", "chance"):
            raise RefusalLabError(f"INLP stop rule must be 'fixed' or 'chance', got {self.stop!r}")
        if self.max_iterations < 1:
            raise RefusalLabError(f"INLP max_iterations must be at least 1, got {self.max_iterations}")
        if self.C is not None and not self.C > 0:
            raise RefusalLabError(f"INLP C must be positive (or None to choose it by cross-validation), got {self.C}")
        self.C_grid = tuple(float(c) for c in self.C_grid)
        if not self.C_grid or not all(c > 0 for c in self.C_grid):
            raise RefusalLabError(f"INLP C_grid must be a non-empty list of positive values, got {self.C_grid}")
        if self.n_folds < 2:
            raise RefusalLabError(f"INLP n_folds must be at least 2, got {self.n_folds}")

    def as_json(self) -> dict:
        return {**dataclasses.asdict(self), "C_grid": list(self.C_grid)}


@dataclass
class INLPResult:
    """Output of :func:`fit_inlp` (float32 CPU tensors; ``k`` = number of directions kept).

    ``basis [k, d]``: orthonormal rows in iteration order (row i = new part of classifier i's weight).
    ``weights [k, d]``: raw classifier weights in original coordinates (``w_i / s``; classifier i acts on
    ``x P_{i−1}``). ``train_accuracies`` ``[k]``: in-sample accuracy of classifier i on ``X P_{i−1}``;
    ``oof_accuracies`` ``[k]``: its cross-fitted out-of-fold accuracy (module docstring). ``residual_accuracy``: the
    OOF accuracy one iteration past the last kept direction. ``chance_level``: ``max(majority prior of y_train, 0.5)``. ``stopped``: ``"chance"``,
    ``"max_iterations"`` or ``"degenerate"`` (a weight had no component outside the span). ``C``: the ``C`` used;
    ``cv_accuracies``: first-classifier OOF accuracy per ``config.C_grid`` value (``None`` when ``config.C`` was set).
    ``mean [d]``/``scale``: the train-set centring and global scale. ``mean_difference [d]``: harmful mean −
    harmless mean of the training rows (the DiM vector of this data; default ``v`` of the ``"dim_share"`` order).
    """

    basis: torch.Tensor
    weights: torch.Tensor
    train_accuracies: list[float]
    oof_accuracies: list[float]
    residual_accuracy: float
    chance_level: float
    stopped: str
    config: INLPConfig
    C: float
    cv_accuracies: list[float] | None
    mean: torch.Tensor
    scale: float
    mean_difference: torch.Tensor
    n_fits: int = 0
    n_not_converged: int = 0
    _svd_cache: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def rank(self) -> int:
        return self.basis.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.basis.shape[1]

    @property
    def first_accuracy(self) -> float:
        """OOF accuracy of the first classifier (on unprojected training activations), kept or not."""
        return self.oof_accuracies[0] if self.oof_accuracies else self.residual_accuracy

    @property
    def accuracy_split(self) -> str:
        """Where the accuracies come from (recorded in provenance next to them)."""
        return f"train, {self.config.n_folds}-fold stratified out-of-fold"

    def _check_k(self, k: int | None) -> int:
        k = self.rank if k is None else k
        if not 0 <= k <= self.rank:
            raise RefusalLabError(f"k must be between 0 and the INLP rank {self.rank}, got {k}")
        return k

    def projection(self, k: int | None = None) -> torch.Tensor:
        """Dense ``P_k = I − V_kᵀ V_k`` ``[d, d]`` from the first ``k`` rows in iteration order (default all).
        Symmetric, idempotent."""
        k = self._check_k(k)
        basis = self.basis[:k]
        alpha = 1.0  # same expression as Subspace.projection_matrix, so P_{α=1} reproduces this bit for bit
        return torch.eye(self.hidden_size, dtype=basis.dtype) - alpha * basis.T @ basis

    def svd_basis(self) -> torch.Tensor:
        """An orthonormal basis ``[k, d]`` of ``range(I − P)`` from one SVD of ``I − P = VᵀV`` (float64 SVD).

        ``I − P`` is itself an orthogonal projection, so all its non-zero singular values equal 1 and the SVD gives
        no meaningful order: this basis spans the same space as :attr:`basis` but its rows are an arbitrary rotation
        of it. It exists to cross-check the span; rank-k uses a named order (:mod:`.inlp_order`).
        """
        if self._svd_cache is None:
            v = self.basis.double()
            u, s, _ = torch.linalg.svd(v.T @ v)
            self._svd_cache = u[:, : int((s > 0.5).sum())].T.contiguous().float()
        return self._svd_cache

    def dim_shares(self, dim_vector: torch.Tensor | None = None) -> torch.Tensor:
        """``|V_i · v| / ‖v‖`` per basis row (iteration order) ``[k]``; ``v`` defaults to :attr:`mean_difference`."""
        return dim_shares(self.basis, self.mean_difference if dim_vector is None else dim_vector)

    def _provenance(self, provenance: Provenance, **extra: object) -> Provenance:
        provenance.check_hidden_size(self.hidden_size)
        inlp = {"config": self.config.as_json(), "C": self.C, "cv_accuracies": self.cv_accuracies,
                "accuracy_split": self.accuracy_split, "first_accuracy": self.first_accuracy,
                "oof_accuracies": self.oof_accuracies, "train_accuracies": self.train_accuracies,
                "residual_accuracy": self.residual_accuracy, "chance_level": self.chance_level,
                "stopped": self.stopped, "n_fits": self.n_fits, "n_not_converged": self.n_not_converged, **extra}
        return dataclasses.replace(provenance, extra={**provenance.extra, "inlp": inlp})

    def to_subspace(self, provenance: Provenance, order: Literal["iteration", "dim_share", "svd"] = "iteration",
                    k: int | None = None, dim_vector: torch.Tensor | None = None) -> Subspace:
        """The kept directions as a :class:`Subspace` (``P = I − VᵀV``), the leading ``k`` rows in ``order``.

        ``order="iteration"``: rows in classifier order, ``scores`` = OOF accuracies. ``order="dim_share"``: rows by
        ``|V_i · v| / ‖v‖`` descending, ``scores`` = those shares (``v = dim_vector``, default
        :attr:`mean_difference`). Either way ``truncate(k)`` is rank-k in that order. ``order="svd"``: rows from
        :meth:`svd_basis` (full span only; ``k`` must be the rank). The order goes to ``provenance.extra["order"]``;
        the INLP settings, ``C``, accuracies (with their split) and the iteration-order ``dim_shares`` go to
        ``provenance.extra["inlp"]``, so :func:`reorder_inlp` can reorder a saved iteration-order subspace.
        """
        k = self._check_k(k)
        if k == 0:
            raise RefusalLabError(
                "INLP found no direction above chance (the first classifier was already at chance level); "
                "there is nothing to project out at this layer"
            )
        shares = self.dim_shares(dim_vector)
        prov = self._provenance(provenance, dim_shares=[float(s) for s in shares])
        prov = dataclasses.replace(prov, extra={**prov.extra, "order": "iteration"})
        full = Subspace(self.basis.clone(), prov, torch.tensor(self.oof_accuracies, dtype=torch.float32))
        if order == "svd":
            if k != self.rank:
                raise RefusalLabError("the SVD basis has no meaningful order; truncate with order 'iteration' or "
                                      "'dim_share'")
            svd_prov = dataclasses.replace(prov, extra={**prov.extra, "order": "svd"})
            return Subspace(self.svd_basis().clone(), svd_prov, torch.ones(k, dtype=torch.float32))
        return reorder_inlp(full, order).truncate(k)

    def first_classifier_direction(self, provenance: Provenance, scale_to: float) -> Direction:
        """Classifier-weight ActAdd direction ``w_1/‖w_1‖ · scale_to`` (points from harmless to harmful).

        sklearn's binary weight points towards ``classes_[1]``, i.e. ``y = 1`` = harmful.
        """
        if self.rank == 0:
            raise RefusalLabError("INLP kept no classifier (first one already at chance); no classifier direction")
        if not math.isfinite(scale_to) or scale_to <= 0:
            raise RefusalLabError(f"scale_to must be a positive finite norm, got {scale_to}")
        w = self.weights[0].double()
        vector = (w / w.norm() * scale_to).float()
        return Direction(vector, self._provenance(provenance, scale_to=float(scale_to)))


class _Basis:
    """Orthonormal rows ``V [k, r]`` grown by Gram–Schmidt; ``project(Z) = Z − (Z Vᵀ) V`` (i.e. ``Z P``)."""

    def __init__(self, r: int) -> None:
        self.rows: list[np.ndarray] = []
        self.V = np.zeros((0, r))

    def project(self, Z: np.ndarray) -> np.ndarray:
        return Z - (Z @ self.V.T) @ self.V if self.rows else Z

    def add(self, w: np.ndarray) -> bool:
        """Append the part of ``w`` orthogonal to ``V`` (Gram–Schmidt twice, for float64 stability), normalised;
        ``False`` (nothing appended) when ``w`` has no component outside the span."""
        w = np.asarray(w, dtype=np.float64).reshape(-1)
        u = w.copy()
        for _ in range(2):
            u -= self.V.T @ (self.V @ u)
        if np.linalg.norm(u) <= 1e-8 * max(np.linalg.norm(w), np.finfo(np.float64).tiny):
            return False
        self.rows.append(u / np.linalg.norm(u))
        self.V = np.stack(self.rows)
        return True


def fit_inlp(X_train: _ArrayLike, y_train: _ArrayLike, config: INLPConfig | None = None) -> INLPResult:
    """Run INLP on one layer from the training split alone: ``X_train [n, d]``, ``y_train [n]`` (1 = harmful).

    Per iteration ``i``: the cross-fitted OOF accuracy (``n_folds`` fits; stop here if at chance), then one fit on
    ``Z P_{i−1}`` with ``Z = (X − μ)/s`` and ``P_{i−1}`` applied as ``Z − (Z Vᵀ) V`` (never densely); the weight is
    Gram–Schmidt orthogonalised against ``V`` and appended. ``config.C = None`` first picks ``C`` by OOF accuracy
    over ``C_grid`` (``n_folds·|C_grid|`` fits; those at the chosen ``C`` are iteration 1's fold fits). When ``n < d`` everything runs exactly in the ``n``-dimensional row
    space of ``Z`` (one QR up front; fold classifiers' weights lie in it too). A fit takes ~2–10 ms for n = 256;
    BLAS runs single-threaded meanwhile.
    """
    config = config or INLPConfig()
    # The solvers make many tiny BLAS calls; with a multi-threaded BLAS, thread start-up dominates (~10x slower).
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_inlp(X_train, y_train, config)


def _fit_inlp(X_train: _ArrayLike, y_train: _ArrayLike, config: INLPConfig, reduce: bool = True) -> INLPResult:
    X = as_features(X_train, "X_train", 2)
    n, d = X.shape
    y = as_labels(y_train, n, "y_train")
    mean_difference = X[y == 1].mean(axis=0) - X[y == 0].mean(axis=0)

    mean = X.mean(axis=0) if config.standardize else np.zeros(d)
    Z = X - mean
    scale = float(np.sqrt((Z**2).mean())) if config.standardize else 1.0
    if not scale > 0:
        raise RefusalLabError("the training activations are all identical; INLP has nothing to separate")
    Z /= scale
    # Fewer samples than features (the usual case: 256 prompts, d = 1536): every classifier weight, hence every
    # basis row, lies in the row space of the centred training data (representer theorem for L2-penalised linear
    # models; induction over iterations), so work exactly in coordinates of an orthonormal basis B [d, n] of it.
    # Same solution, but the solver runs in n instead of d dimensions.
    B = np.linalg.qr(Z.T)[0] if reduce and n < d else None
    if B is not None:
        Z = Z @ B
    r = Z.shape[1]

    probe = ProbeFitter(config.classifier, config.max_iter_solver, config.tol, config.seed)
    folds = stratified_folds(y, config.n_folds, config.seed)
    cv_accuracies, first = None, None
    if config.C is None:  # the search's runs at the chosen C are iteration 1's fold classifiers
        C, cv_accuracies, fold_weights = probe.choose_C(Z, y, folds, config.C_grid)
        first = cv_accuracies[config.C_grid.index(C)], fold_weights
    else:
        C = config.C
    chance = max(float(y.mean()), 1.0 - float(y.mean()), 0.5)
    threshold = chance + config.epsilon
    full, fold_bases = _Basis(r), [_Basis(r) for _ in folds]
    weights: list[np.ndarray] = []
    train_acc: list[float] = []
    oof_acc: list[float] = []
    stopped = "max_iterations"
    residual = float("nan")

    for it in range(config.max_iterations + 1):
        # Cross-fitted held-out accuracy: fold j runs its own INLP on the rows outside F_j and scores F_j.
        if it == 0 and first is not None:
            acc, fold_weights = first
        else:
            acc, fold_weights = probe.oof_accuracy(Z, y, folds, C, it, [basis.project for basis in fold_bases])
        if it == config.max_iterations or (config.stop == "chance" and acc <= threshold):
            residual = acc
            stopped = "chance" if it < config.max_iterations else "max_iterations"
            break
        Zp = full.project(Z)
        clf = probe.fit(Zp, y, C, it)
        if not full.add(clf.coef_):
            residual, stopped = acc, "degenerate"
            break
        for basis, w in zip(fold_bases, fold_weights):
            basis.add(w)  # a degenerate fold weight leaves that fold's projection as it is
        weights.append(np.asarray(clf.coef_, dtype=np.float64).reshape(-1) / scale)
        train_acc.append(float(clf.score(Zp, y)))
        oof_acc.append(acc)

    if probe.not_converged:
        warnings.warn(f"INLP: {probe.not_converged} of {probe.fits} classifier fits did not converge in "
                      f"{config.max_iter_solver} solver iterations; raise max_iter_solver or lower C",
                      RuntimeWarning, stacklevel=3)

    def _t(a: list[np.ndarray]) -> torch.Tensor:
        m = np.stack(a) if a else np.zeros((0, r))
        return torch.from_numpy(m if B is None else m @ B.T).float()

    return INLPResult(basis=_t(full.rows), weights=_t(weights), train_accuracies=train_acc, oof_accuracies=oof_acc,
                      residual_accuracy=residual, chance_level=chance, stopped=stopped, config=config, C=C,
                      cv_accuracies=cv_accuracies, mean=torch.from_numpy(mean).float(), scale=scale,
                      mean_difference=torch.from_numpy(mean_difference).float(), n_fits=probe.fits,
                      n_not_converged=probe.not_converged)


def inlp_per_layer(X: _ArrayLike, y: _ArrayLike, config: INLPConfig | None = None, layers: list[int] | None = None,
                   progress: bool = True) -> dict[int, INLPResult]:
    """:func:`fit_inlp` on each layer of the training split: ``X [n, L, d]``, ``y [n]`` → ``{layer: INLPResult}``.

    About 0.2 s per layer for n = 256, d = 1536, a few iterations and the C search (``benchmarks/bench_inlp.py``).
    """
    if X.ndim != 3:
        raise RefusalLabError(f"per-layer INLP needs [n, L, d] activations, got {tuple(X.shape)}")
    n_layers = X.shape[1]
    layers = list(range(n_layers)) if layers is None else list(layers)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise RefusalLabError(f"layers {bad} out of range for activations with {n_layers} layers")
    iterator = layers
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(layers, desc="INLP", unit="layer")
    return {layer: fit_inlp(X[:, layer], y, config) for layer in iterator}
