"""Residual geometry, frames and landing fractions, each against its definition computed by hand (numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from refusal_lab.analysis.geometry import (
    Fraction,
    cluster_silhouette,
    cross_layer_cosines,
    fixed_frame,
    landing_fraction,
    pca_frame,
    probe_accuracy,
    project,
    residual_geometry,
)
from refusal_lab.core.errors import RefusalLabError

pytestmark = pytest.mark.usefixtures("one_thread")


def silhouette_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """mean_i (b_i − a_i) / max(a_i, b_i); a_i: mean distance to the other rows of i's class, b_i: to the others."""
    x = np.concatenate([a, b])
    label = np.array([1] * len(a) + [0] * len(b))
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    scores = []
    for i in range(len(x)):
        same, other = label == label[i], label != label[i]
        a_i = dist[i, same].sum() / (same.sum() - 1)
        b_i = dist[i, other].mean()
        scores.append((b_i - a_i) / max(a_i, b_i))
    return float(np.mean(scores))


def test_silhouette_matches_the_formula_and_is_one_for_far_tight_clusters():
    a = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    b = np.array([[3.0, 1.0], [4.0, 0.0], [2.0, 3.0], [5.0, 5.0]])
    assert cluster_silhouette(torch.tensor(a), torch.tensor(b)) == pytest.approx(silhouette_by_hand(a, b), abs=1e-12)
    g = torch.Generator().manual_seed(0)
    tight = 1e-3 * torch.randn(20, 4, generator=g)
    assert cluster_silhouette(tight, tight + 100.0) == pytest.approx(1.0, abs=1e-4)


def test_probe_accuracy_is_one_when_separable_and_chance_when_identical():
    g = torch.Generator().manual_seed(1)
    harmful, harmless = torch.randn(40, 6, generator=g), torch.randn(40, 6, generator=g)
    harmful[:, 2] += 10.0  # separable along one coordinate
    assert probe_accuracy(harmful, harmless) == 1.0
    same1, same2 = torch.randn(200, 6, generator=g), torch.randn(200, 6, generator=g)
    assert abs(probe_accuracy(same1, same2) - 0.5) < 0.1


def test_probe_accuracy_is_the_mean_of_standardised_logistic_fold_accuracies():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(2)
    harmful, harmless = rng.normal(0.4, 1.0, (30, 5)), rng.normal(0.0, 3.0, (25, 5))
    x, y = np.concatenate([harmful, harmless]), np.array([1] * 30 + [0] * 25)
    accuracies = []
    for train, test in StratifiedKFold(4, shuffle=True, random_state=7).split(x, y):
        mean, std = x[train].mean(0), x[train].std(0)
        clf = LogisticRegression(C=1.0, max_iter=2000).fit((x[train] - mean) / std, y[train])
        accuracies.append(np.mean(clf.predict((x[test] - mean) / std) == y[test]))
    got = probe_accuracy(torch.tensor(harmful), torch.tensor(harmless), folds=4, seed=7)
    assert got == pytest.approx(float(np.mean(accuracies)), abs=1e-12)
    with pytest.raises(RefusalLabError, match="5-fold"):
        probe_accuracy(torch.tensor(harmful[:3]), torch.tensor(harmless))


def test_residual_geometry_rows_follow_their_definitions():
    rng = np.random.default_rng(3)
    n, m, n_layers, d = 12, 10, 3, 4
    harmful = rng.normal(size=(n, n_layers, d)) + np.array([3.0, 1.0, 0.0, 0.0])
    harmless = rng.normal(size=(m, n_layers, d)) + np.array([1.0, 2.0, 0.0, 0.0])
    harmful[:, 2], harmless[:, 2] = harmful[:, 2] * 0.01 + 5.0, harmless[:, 2] * 0.01 - 5.0  # far apart at layer 2
    table = residual_geometry(torch.tensor(harmful, dtype=torch.float32), torch.tensor(harmless, dtype=torch.float32),
                              folds=3, seed=0)
    assert list(table.columns) == ["layer", "cos_means", "norm_harmful_mean", "norm_harmless_mean", "norm_refusal",
                                   "silhouette", "probe_accuracy"]
    assert table["layer"].tolist() == [0, 1, 2]
    h32, s32 = harmful.astype(np.float32).astype(np.float64), harmless.astype(np.float32).astype(np.float64)
    for layer in range(n_layers):
        mu1, mu0 = h32[:, layer].mean(0), s32[:, layer].mean(0)
        row = table.iloc[layer]
        assert row.cos_means == pytest.approx(mu1 @ mu0 / (np.linalg.norm(mu1) * np.linalg.norm(mu0)), abs=1e-6)
        assert row.norm_harmful_mean == pytest.approx(math.sqrt(mu1 @ mu1), rel=1e-9)
        assert row.norm_harmless_mean == pytest.approx(math.sqrt(mu0 @ mu0), rel=1e-9)
        assert row.norm_refusal == pytest.approx(np.linalg.norm(mu1 - mu0), rel=1e-9)
        assert row.silhouette == pytest.approx(silhouette_by_hand(h32[:, layer], s32[:, layer]), abs=1e-9)
        assert 0.0 <= row.probe_accuracy <= 1.0
    assert table.iloc[2].probe_accuracy == 1.0 and table.iloc[2].silhouette > 0.99
    assert table.iloc[2].cos_means == pytest.approx(-1.0, abs=1e-3)  # means ≈ ±5·(1, 1, 1, 1)
    with pytest.raises(RefusalLabError, match=r"\[n, L, d\]"):
        residual_geometry(torch.zeros(4, 3), torch.zeros(4, 3))


def test_cross_layer_cosines_of_a_hand_built_set():
    directions = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [-2.0, 0.0, 0.0]])
    s = 1 / math.sqrt(2)
    expected = np.array([[1.0, s, -1.0], [s, 1.0, -s], [-1.0, -s, 1.0]])
    got = cross_layer_cosines(directions)
    assert isinstance(got, np.ndarray) and got.shape == (3, 3)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_fixed_frame_is_the_direction_and_the_top_orthogonal_component():
    rng = np.random.default_rng(4)
    d = 5
    # variance: largest along the direction's own axis e0, then e3 (σ = 4), then e1 (σ = 2), little elsewhere
    scale = np.array([10.0, 2.0, 0.1, 4.0, 0.1])
    harmful = rng.normal(size=(30, d)) * scale + np.array([1.0, 0.0, 0.0, 0.0, 0.0])
    harmless = rng.normal(size=(25, d)) * scale
    direction = torch.tensor([3.0, 0.0, 0.0, 0.0, 0.0]) + 0.3 * torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0])
    frame = fixed_frame(direction, torch.tensor(harmful), torch.tensor(harmless))
    assert frame.shape == (2, d)
    np.testing.assert_allclose((frame @ frame.T).numpy(), np.eye(2), atol=1e-12)
    r = direction.double().numpy() / np.linalg.norm(direction.double().numpy())
    np.testing.assert_allclose(frame[0].numpy(), r, atol=1e-7)
    assert abs(float(frame[1].numpy() @ r)) < 1e-12
    # by hand: top eigenvector of the covariance of the pooled rows with their r̂ component removed
    x = np.concatenate([harmful, harmless])
    x = x - (x @ r)[:, None] * r
    x = x - x.mean(0)
    eigvals, eigvecs = np.linalg.eigh(x.T @ x)
    top = eigvecs[:, -1]
    assert abs(float(frame[1].numpy() @ top)) == pytest.approx(1.0, abs=1e-9)
    assert abs(float(frame[1, 3])) > 0.99  # the σ = 4 axis
    with pytest.raises(RefusalLabError, match="zero"):
        fixed_frame(torch.zeros(d), torch.tensor(harmful), torch.tensor(harmless))


def test_pca_frame_is_the_top_two_principal_axes_and_project_is_a_matrix_product():
    rng = np.random.default_rng(5)
    harmful = rng.normal(size=(40, 4)) * np.array([1.0, 5.0, 0.2, 2.0]) + 7.0
    harmless = rng.normal(size=(30, 4)) * np.array([1.0, 5.0, 0.2, 2.0]) + 7.0
    frame = pca_frame(torch.tensor(harmful), torch.tensor(harmless))
    assert frame.shape == (2, 4)
    np.testing.assert_allclose((frame @ frame.T).numpy(), np.eye(2), atol=1e-12)
    x = np.concatenate([harmful, harmless])
    x = x - x.mean(0)
    eigvals, eigvecs = np.linalg.eigh(x.T @ x)
    for row, axis in zip(frame.numpy(), (eigvecs[:, -1], eigvecs[:, -2])):
        assert abs(float(row @ axis)) == pytest.approx(1.0, abs=1e-9)
    h = rng.normal(size=(6, 4))
    coords = project(torch.tensor(h, dtype=torch.float32), frame)
    assert coords.shape == (6, 2)
    np.testing.assert_allclose(coords.numpy(), h.astype(np.float32).astype(np.float64) @ frame.numpy().T, atol=1e-12)


def test_landing_fraction_on_a_two_d_toy():
    mu1, mu0 = torch.tensor([4.0, 1.0]), torch.tensor([0.0, 1.0])
    at_harmless = landing_fraction(mu0.repeat(5, 1), mu1, mu0)
    assert at_harmless == Fraction(1.0, 1.0, 1.0, 1.0)
    at_harmful = landing_fraction(mu1.repeat(5, 1), mu1, mu0)
    assert at_harmful == Fraction(0.0, 0.0, 0.0, 0.0)
    reflected = landing_fraction((2 * mu0 - mu1).repeat(5, 1), mu1, mu0)  # mirrored through μ₀: t = −1
    assert (reflected.value, reflected.nearer_harmless) == (pytest.approx(2.0), 1.0)
    # off-axis components do not count: t(h) = (h₀ − 0)·4 / 16
    rows = torch.tensor([[1.0, 9.0], [3.0, -4.0], [0.0, 0.0], [2.0, 1.0]])
    mixed = landing_fraction(rows, mu1, mu0)
    assert mixed.value == pytest.approx(1.0 - np.mean([1 / 4, 3 / 4, 0.0, 2 / 4]))
    # nearer μ₀ = (0, 1) than μ₁ = (4, 1): rows 0 and 2; row 3 is a tie, which is not nearer harmful, so it counts
    assert mixed.nearer_harmless == pytest.approx(3 / 4)


def test_landing_fraction_interval_is_a_bootstrap_of_the_row_mean():
    g = torch.Generator().manual_seed(6)
    mu1, mu0 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 0.0])
    rows = torch.randn(400, 3, generator=g) * 0.5 + torch.tensor([0.3, 0.0, 0.0])
    got = landing_fraction(rows, mu1, mu0, seed=0)
    moved = 1.0 - rows[:, 0].double().numpy()
    half_width = 1.96 * moved.std(ddof=1) / math.sqrt(len(moved))
    assert got.value == pytest.approx(moved.mean(), abs=1e-12)
    assert got.low < got.value < got.high
    assert got.low == pytest.approx(moved.mean() - half_width, abs=0.15 * half_width)
    assert got.high == pytest.approx(moved.mean() + half_width, abs=0.15 * half_width)
    assert landing_fraction(rows, mu1, mu0, seed=0) == got  # seeded
