"""Named rank-k orders of INLP subspaces: classifier iteration order and share of the class-mean difference."""

from __future__ import annotations

import pytest
import torch

from refusal_lab.core.artifacts import Provenance, Subspace, load_artifact
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.fitting.inlp import INLPConfig, fit_inlp
from refusal_lab.fitting.inlp_order import reorder_inlp

D = 32


def prov(**extra) -> Provenance:
    return Provenance("synthetic", "inlp", D, 3, -1, "abc", extra)


@pytest.fixture(scope="module")
def planted_result():
    """Three label-carrying directions with equal signal-to-noise but different scales (mean shift ±σ_i, noise σ_i):
    the best single classifier weights the small-σ direction most (≈ 1/σ), the class-mean difference the large-σ
    one (≈ σ), so the two orders disagree."""
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(D, 3, generator=g, dtype=torch.float64))[0].T
    sig = torch.tensor([0.3, 1.0, 3.0], dtype=torch.float64)
    y = torch.arange(1200) % 2
    c = (2 * y - 1).double()[:, None] * sig + torch.randn(1200, 3, generator=g, dtype=torch.float64) * sig
    noise = torch.randn(1200, D, generator=g, dtype=torch.float64)
    X = (noise - (noise @ U.T) @ U + c @ U + 5.0) * 40.0
    return X, y, fit_inlp(X, y, INLPConfig(stop="fixed", max_iterations=6))


def test_dim_share_order_by_hand():
    """V = rows of an orthonormal matrix Q (rotated e_1, e_2, e_3), v = (0.1, −3, 2, 0.5) Q: |V_i · v| = 0.1, 3, 2,
    so the order is rows 1, 2, 0 with scores (3, 2, 0.1)/‖v‖ = (3, 2, 0.1)/√13.26."""
    Q = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0]
    V = Q[:3].float()
    v = torch.tensor([0.1, -3.0, 2.0, 0.5], dtype=torch.float64) @ Q
    sub = Subspace(V, Provenance("m", "inlp", 4, extra={"order": "iteration"}), torch.tensor([0.9, 0.8, 0.7]))
    ordered = reorder_inlp(sub, "dim_share", dim_vector=v)
    assert torch.equal(ordered.basis, V[[1, 2, 0]])
    torch.testing.assert_close(ordered.scores, torch.tensor([3.0, 2.0, 0.1]) / 13.26**0.5)
    assert ordered.provenance.extra["order"] == "dim_share" and sub.provenance.extra["order"] == "iteration"
    assert torch.equal(ordered.truncate(1).basis, V[1:2])
    assert reorder_inlp(sub, "iteration") is sub


def test_truncate_after_dim_share_keeps_the_largest_shares(planted_result):
    X, y, r = planted_result
    v = X[y == 1].mean(0) - X[y == 0].mean(0)
    V = r.basis.double()
    shares = (V @ v).abs() / v.norm()
    by_share = sorted(range(r.rank), key=lambda i: -float(shares[i]))
    assert by_share != list(range(r.rank))  # the orders disagree here, so the test can tell them apart
    sub = r.to_subspace(prov(), order="dim_share")
    assert sub.provenance.extra["order"] == "dim_share"
    torch.testing.assert_close(sub.scores, shares[by_share].float())
    eye = torch.eye(D, dtype=torch.float64)
    for k in range(1, r.rank + 1):
        top = V[by_share[:k]]
        torch.testing.assert_close(sub.truncate(k).projection_matrix().double(), eye - top.T @ top, atol=1e-6,
                                   rtol=0)
        torch.testing.assert_close(r.to_subspace(prov(), order="dim_share", k=k).basis, sub.basis[:k])
    # iteration order keeps the first k classifiers instead
    it = r.to_subspace(prov(), order="iteration")
    assert it.provenance.extra["order"] == "iteration" and torch.equal(it.truncate(2).basis, r.basis[:2])
    torch.testing.assert_close(it.scores, torch.tensor(r.oof_accuracies))


def test_reordering_keeps_the_span(planted_result):
    _, _, r = planted_result
    it = r.to_subspace(prov())
    ds = r.to_subspace(prov(), order="dim_share")
    torch.testing.assert_close(ds.projection_matrix(), it.projection_matrix(), atol=1e-6, rtol=0)
    torch.testing.assert_close(ds.projection_matrix(2.0), it.projection_matrix(2.0), atol=1e-6, rtol=0)
    assert sorted(ds.basis.tolist()) == sorted(it.basis.tolist())  # a permutation of the same rows


def test_saved_iteration_subspace_reorders_from_recorded_shares(tmp_path, planted_result):
    X, y, r = planted_result
    it = r.to_subspace(prov())
    it.save(tmp_path / "inlp")
    loaded = load_artifact(tmp_path / "inlp", hidden_size=D)
    recorded = loaded.provenance.extra["inlp"]["dim_shares"]
    v = (X[y == 1].mean(0) - X[y == 0].mean(0)).double()
    torch.testing.assert_close(torch.tensor(recorded), ((r.basis.double() @ v).abs() / v.norm()).float())
    direct = r.to_subspace(prov(), order="dim_share")
    again = reorder_inlp(loaded, "dim_share")
    assert torch.equal(again.basis, direct.basis) and torch.equal(again.scores, direct.scores)
    # an explicit DiM vector overrides the recorded shares: v = basis row 3 puts row 3 first with share 1
    explicit = reorder_inlp(loaded, "dim_share", dim_vector=r.basis[3] * 7.0)
    assert torch.equal(explicit.basis[0], r.basis[3]) and abs(float(explicit.scores[0]) - 1.0) < 1e-5


def test_order_errors(planted_result):
    _, _, r = planted_result
    it = r.to_subspace(prov())
    with pytest.raises(RefusalLabError, match="order must be one of iteration, dim_share"):
        reorder_inlp(it, "svd")
    with pytest.raises(RefusalLabError, match="needs an INLP subspace in iteration order"):
        reorder_inlp(reorder_inlp(it, "dim_share"), "dim_share")
    with pytest.raises(RefusalLabError, match="non-zero"):
        reorder_inlp(it, "dim_share", dim_vector=torch.zeros(D))
    with pytest.raises(RefusalLabError, match="records no DiM shares"):
        reorder_inlp(Subspace(it.basis, prov(order="iteration")), "dim_share")
    svd = r.to_subspace(prov(), order="svd")
    assert svd.provenance.extra["order"] == "svd" and svd.truncate(svd.rank).rank == r.rank
    with pytest.raises(RefusalLabError, match="no row order"):
        svd.truncate(2)
    with pytest.raises(RefusalLabError, match="6 finite scores"):
        it.reordered(torch.ones(5), "x")


def test_reordered_is_stable_on_ties():
    V = torch.eye(4)[:3]
    sub = Subspace(V, Provenance("m", "x", 4)).reordered(torch.tensor([0.5, 0.9, 0.5]), "custom")
    assert torch.equal(sub.basis, V[[1, 0, 2]]) and sub.provenance.extra["order"] == "custom"
    assert torch.equal(sub.scores, torch.tensor([0.9, 0.5, 0.5]))
