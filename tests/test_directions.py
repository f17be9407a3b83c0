"""Direction math: DiM, INLP, classifier direction, LEACE, QR stacking, save/load (synthetic, seeded, fast)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from refusal_lab.core.artifacts import AffineEraser, Direction, Provenance, Subspace, load_artifact
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.fitting.classifier import classifier_direction
from refusal_lab.fitting.dim import cosine_matrix, difference_in_means, dim_candidates
from refusal_lab.fitting.inlp import INLPConfig, fit_inlp, inlp_per_layer
from refusal_lab.fitting.leace import fit_leace
from refusal_lab.fitting.subspace import principal_angles, stack_subspace

D = 64


def prov(method: str = "test", d: int = D, **kw) -> Provenance:
    return Provenance(model="synthetic", method=method, hidden_size=d, layer=3, position=-1, data_hash="abc", **kw)


def fresh_probe_accuracy(X_train, y_train, X_test, y_test) -> float:
    clf = LogisticRegression(max_iter=2000).fit(X_train.double().numpy(), y_train.numpy())
    return float(clf.score(X_test.double().numpy(), y_test.numpy()))


@pytest.fixture(scope="module")
def planted():
    """Labels carried by 3 orthonormal directions U (in R^64) with very different noise scales per direction, so
    a single linear classifier's weight is not the mean difference and INLP needs several iterations. Activations
    are offset and scaled up like a residual stream (large norm)."""
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(D, 3, generator=g, dtype=torch.float64))
    U = u.T.contiguous()
    sig = torch.tensor([0.3, 1.0, 3.0], dtype=torch.float64)

    def make(n):
        y = torch.randint(0, 2, (n,), generator=g)
        c = (2 * y - 1).double()[:, None] * sig + torch.randn(n, 3, generator=g, dtype=torch.float64) * sig
        noise = torch.randn(n, D, generator=g, dtype=torch.float64)
        noise = noise - (noise @ U.T) @ U
        return (noise + c @ U + 5.0) * 40.0, y

    (Xt, yt), (Xs, ys) = make(2000), make(2000)
    return U, Xt, yt, Xs, ys


@pytest.fixture(scope="module")
def planted_inlp(planted):
    _, Xt, yt, _, _ = planted
    return fit_inlp(Xt, yt, INLPConfig(stop="chance", max_iterations=20))


@pytest.fixture(scope="module")
def mean_shift():
    """One concept = one mean shift along a unit direction u, isotropic noise."""
    g = torch.Generator().manual_seed(1)
    u = torch.randn(D, generator=g, dtype=torch.float64)
    u /= u.norm()

    def make(n):
        y = torch.randint(0, 2, (n,), generator=g)
        return torch.randn(n, D, generator=g, dtype=torch.float64) + 3.0 + 1.5 * y.double()[:, None] * u, y

    return (u, *make(1000))


# ---------------------------------------------------------------- DiM and cosines


def test_dim_recovers_mean_difference():
    g = torch.Generator().manual_seed(2)
    shift = torch.randn(D, generator=g)
    harmful = torch.randn(20000, D, generator=g, dtype=torch.float64) + 1.0 + shift.double()
    harmless = torch.randn(20000, D, generator=g, dtype=torch.float64) + 1.0
    direction = difference_in_means(harmful.mean(0), harmless.mean(0), prov("dim"))
    assert direction.vector.dtype == torch.float32
    assert float(cosine_matrix(direction.vector, shift)) > 0.99
    assert torch.allclose(direction.vector, shift, atol=0.05)
    with pytest.raises(RefusalLabError, match="identical"):
        difference_in_means(harmless.mean(0), harmless.mean(0), prov("dim"))
    with pytest.raises(RefusalLabError, match="hidden size"):
        difference_in_means(harmful.mean(0), harmless.mean(0), prov("dim", d=D + 1))


def test_dim_candidates_shape_and_dtype():
    a = torch.randn(4, 2, D, dtype=torch.float64)
    b = torch.randn(4, 2, D, dtype=torch.float64)
    cands = dim_candidates(a, b)
    assert cands.shape == (4, 2, D) and cands.dtype == torch.float32
    assert torch.allclose(cands, (a - b).float())


def test_cosine_matrix_basics():
    a = torch.eye(3, 5)
    b = torch.stack([torch.tensor([2.0, 0, 0, 0, 0]), torch.tensor([-1.0, 1, 0, 0, 0]), torch.zeros(5)])
    c = cosine_matrix(a, b)
    assert c.shape == (3, 3)
    assert torch.allclose(c[:, 0], torch.tensor([1.0, 0, 0]))
    assert torch.allclose(c[:2, 1], torch.tensor([-(2**-0.5), 2**-0.5]))
    assert torch.equal(c[:, 2], torch.zeros(3))  # zero vector -> 0, not NaN
    x = torch.randn(7, 5)
    assert torch.allclose(cosine_matrix(x, x).diagonal(), torch.ones(7), atol=1e-6)


# ---------------------------------------------------------------- INLP


def test_inlp_basis_orthonormal_and_projection_algebra(planted_inlp):
    r = planted_inlp
    V = r.basis
    assert V.dtype == torch.float32 and V.shape[1] == D
    assert torch.allclose(V @ V.T, torch.eye(r.rank), atol=1e-5)
    P = r.projection()
    assert torch.allclose(P, P.T, atol=1e-6)
    assert torch.allclose(P @ P, P, atol=1e-5)
    for k in range(r.rank + 1):
        Vk = V[:k]
        assert torch.allclose(r.projection(k), torch.eye(D) - Vk.T @ Vk, atol=1e-6)
    sub = r.to_subspace(prov("inlp"))
    assert torch.equal(sub.projection_matrix(1.0), P)
    assert torch.equal(sub.truncate(2).projection_matrix(1.0), r.projection(2))
    P2 = sub.projection_matrix(2.0)
    assert torch.allclose(P2 @ P2, torch.eye(D), atol=1e-5)
    assert torch.allclose(sub.scores, torch.tensor(r.oof_accuracies))
    assert sub.provenance.extra["order"] == "iteration"


def test_inlp_recovers_planted_span_and_erases(planted, planted_inlp):
    U, Xt, yt, Xs, ys = planted
    r = planted_inlp
    assert r.stopped == "chance" and 3 <= r.rank < 20
    cosines = principal_angles(U, r.basis)
    assert (cosines >= 0.9).sum() == 3, cosines
    assert ((U.float() @ r.basis.T).norm(dim=1) >= 0.9).all()
    assert r.first_accuracy > 0.9 and r.residual_accuracy <= r.chance_level + r.config.epsilon
    P = r.projection().double()
    assert fresh_probe_accuracy(Xt, yt, Xs, ys) > 0.9
    assert fresh_probe_accuracy(Xt @ P, yt, Xs @ P, ys) <= 0.6


def test_inlp_svd_basis_spans_same_space(planted_inlp):
    r = planted_inlp
    S = r.svd_basis()
    assert S.shape == r.basis.shape
    assert torch.allclose(S @ S.T, torch.eye(r.rank), atol=1e-5)
    assert torch.allclose(principal_angles(S, r.basis), torch.ones(r.rank, dtype=torch.float64), atol=1e-5)
    sub = r.to_subspace(prov("inlp"), order="svd")
    assert torch.allclose(sub.projection_matrix(), r.projection(), atol=1e-5)


def test_inlp_stop_rules(planted):
    _, Xt, yt, _, _ = planted
    fixed = fit_inlp(Xt[:600], yt[:600], INLPConfig(stop="fixed", max_iterations=9))
    assert fixed.rank == 9 and fixed.stopped == "max_iterations"
    assert len(fixed.oof_accuracies) == len(fixed.train_accuracies) == 9 and fixed.weights.shape == (9, D)
    early = fit_inlp(Xt[:600], yt[:600], INLPConfig(stop="chance", max_iterations=20, epsilon=0.05))
    assert early.stopped == "chance" and early.rank < 9
    # chance stop keeps no direction whose classifier was at chance (out of fold), and stops at the first one that is
    assert min(early.oof_accuracies) > early.chance_level + 0.05
    assert early.residual_accuracy <= early.chance_level + 0.05
    assert early.oof_accuracies == fixed.oof_accuracies[: early.rank]
    # ...and the first iterations agree with the fixed run (same data, same solver)
    assert torch.allclose(early.basis, fixed.basis[: early.rank], atol=1e-4)
    svm = fit_inlp(Xt[:600], yt[:600], INLPConfig(classifier="svm", stop="fixed", max_iterations=3))
    assert svm.rank == 3 and torch.allclose(svm.basis @ svm.basis.T, torch.eye(3), atol=1e-5)


def test_inlp_row_space_reduction_is_exact():
    """n < d: fitting in the row space of the training data gives the same classifiers as fitting in R^d."""
    from refusal_lab.fitting import inlp

    g = torch.Generator().manual_seed(5)
    d, u = 400, torch.zeros(400, dtype=torch.float64)
    u[:2] = 1.0
    y = torch.arange(120) % 2
    X = torch.randn(120, d, generator=g, dtype=torch.float64) * 3 + 10 + y[:, None] * u
    cfg = INLPConfig(stop="fixed", max_iterations=3, tol=1e-10)
    reduced, full = inlp._fit_inlp(X, y, cfg), inlp._fit_inlp(X, y, cfg, reduce=False)
    assert reduced.C == full.C and reduced.cv_accuracies == full.cv_accuracies
    assert reduced.oof_accuracies == full.oof_accuracies
    assert ((reduced.basis * full.basis).sum(1) > 0.999).all()
    assert torch.allclose(reduced.weights, full.weights, rtol=1e-2, atol=1e-2 * float(full.weights.abs().max()))


def test_inlp_pure_noise_keeps_nothing():
    g = torch.Generator().manual_seed(3)
    X, y = torch.randn(300, D, generator=g), torch.arange(300) % 2
    r = fit_inlp(X, y, INLPConfig(epsilon=0.1))
    assert r.rank == 0 and r.stopped == "chance" and torch.equal(r.projection(), torch.eye(D))
    with pytest.raises(RefusalLabError, match="no direction"):
        r.to_subspace(prov("inlp"))


def test_inlp_input_validation(planted):
    _, Xt, yt, _, _ = planted
    with pytest.raises(RefusalLabError, match="binary"):
        fit_inlp(Xt, yt + 1)
    with pytest.raises(RefusalLabError, match="NaN"):
        fit_inlp(torch.full_like(Xt, float("nan")), yt)
    with pytest.raises(RefusalLabError, match="both harmful"):
        fit_inlp(Xt, torch.ones_like(yt))
    with pytest.raises(RefusalLabError, match="4-fold cross-validation needs at least 4 harmful"):
        fit_inlp(Xt[:7], torch.tensor([1, 1, 1, 0, 0, 0, 0]))
    for bad in ({"stop": "sometimes"}, {"C": 0.0}, {"C_grid": ()}, {"n_folds": 1}):
        with pytest.raises(RefusalLabError):
            INLPConfig(**bad)


def test_inlp_per_layer(planted):
    _, Xt, yt, _, _ = planted
    noise = torch.randn(400, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    X = torch.stack([Xt[:400], noise], dim=1)  # layer 1 carries no concept
    results = inlp_per_layer(X, yt[:400], INLPConfig(max_iterations=5), progress=False)
    assert set(results) == {0, 1}
    assert results[0].rank >= 1 and results[0].first_accuracy > 0.85
    assert results[1].rank <= 1 and results[1].first_accuracy < 0.6
    only = inlp_per_layer(X, yt[:400], INLPConfig(max_iterations=2), layers=[1], progress=False)
    assert set(only) == {1} and only[1].C == results[1].C
    with pytest.raises(RefusalLabError, match="out of range"):
        inlp_per_layer(X, yt[:400], layers=[2], progress=False)


# ---------------------------------------------------------------- classifier direction


def test_first_classifier_direction_matches_dim(mean_shift):
    u, Xt, yt = mean_shift
    r = fit_inlp(Xt, yt, INLPConfig(stop="fixed", max_iterations=1))
    dim = difference_in_means(Xt[yt == 1].mean(0), Xt[yt == 0].mean(0), prov("dim"))
    clf = classifier_direction(r, dim)
    assert clf.provenance.method == "classifier" and clf.provenance.layer == dim.provenance.layer
    assert abs(clf.norm - dim.norm) < 1e-4 * dim.norm
    assert float(cosine_matrix(clf.vector, dim.vector)) > 0.9  # positive: points harmless -> harmful
    assert float(cosine_matrix(clf.vector, u)) > 0.9
    direct = r.first_classifier_direction(prov("clf"), scale_to=2.0)
    assert abs(direct.norm - 2.0) < 1e-5
    assert torch.allclose(direct.unit, clf.unit, atol=1e-6)


# ---------------------------------------------------------------- LEACE


@pytest.fixture(scope="module")
def leace_data(planted):
    _, Xt, yt, Xs, ys = planted
    return Xt, yt, Xs, ys, fit_leace(Xt, yt, prov("leace"))


def test_leace_erases(leace_data):
    Xt, yt, Xs, ys, eraser = leace_data
    assert eraser.rank == 1
    assert fresh_probe_accuracy(Xt, yt, Xs, ys) > 0.9
    assert fresh_probe_accuracy(eraser(Xt), yt, eraser(Xs), ys) <= 0.6


def test_leace_matches_reference_and_is_idempotent(leace_data):
    from concept_erasure import LeaceEraser

    Xt, yt, Xs, _, eraser = leace_data
    reference = LeaceEraser.fit(Xt, yt.double())
    ours = eraser(Xs)
    assert ours.dtype == Xs.dtype
    assert torch.allclose(ours, reference(Xs), rtol=1e-5, atol=1e-4 * float(Xs.abs().max()))
    assert torch.allclose(eraser(ours), ours, rtol=1e-5, atol=1e-4 * float(Xs.abs().max()))
    P = eraser.linear_part()
    assert torch.allclose(P @ P, P, atol=1e-4)
    affine = eraser.bias + (Xs.float() - eraser.bias) @ P.T
    assert torch.allclose(affine, eraser(Xs.float()), rtol=1e-4, atol=1e-2)
    assert eraser(Xs.to(torch.bfloat16)).dtype == torch.bfloat16
    assert eraser.idempotent and eraser.stacking == "each"  # fits interventions.base.Transform


# ---------------------------------------------------------------- QR subspaces


def test_stack_subspace_qr():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, D, generator=g)
    dependent = 2.0 * a[0] - 0.5 * a[1]
    sub = stack_subspace([a[0], a[1], dependent, a[2]], prov("stack"))
    assert sub.rank == 3 and sub.provenance.extra["stack_kept"] == [0, 1, 3]
    assert torch.allclose(sub.basis @ sub.basis.T, torch.eye(3), atol=1e-6)
    # spans the inputs: projecting them out leaves nothing
    resid = torch.stack([a[0], a[1], dependent, a[2]]) @ sub.projection_matrix()
    assert resid.norm() < 1e-4
    # Gram-Schmidt order and sign fix: row 0 is a_0's unit vector, each row has positive dot with its input
    assert torch.allclose(sub.basis[0], a[0] / a[0].norm(), atol=1e-6)
    assert ((sub.basis * a).sum(1) > 0).all()
    flipped = stack_subspace([-a[0], a[1]], prov("stack"))
    assert torch.allclose(flipped.basis[0], -a[0] / a[0].norm(), atol=1e-6)
    with pytest.raises(RefusalLabError, match="hidden size"):
        stack_subspace([a[0]], prov("stack", d=D + 1))


def test_principal_angles():
    e = torch.eye(D)
    A = Subspace(e[:3], prov())
    assert torch.allclose(principal_angles(A, A), torch.ones(3, dtype=torch.float64))
    B = Subspace(torch.stack([e[0], (e[1] + e[5]) / 2**0.5]), prov())
    assert torch.allclose(principal_angles(A, B), torch.tensor([1.0, 2**-0.5], dtype=torch.float64), atol=1e-7)
    assert torch.allclose(principal_angles(Subspace(e[10:12], prov()), A), torch.zeros(2, dtype=torch.float64))


# ---------------------------------------------------------------- artifacts


def test_save_load_round_trip(tmp_path, planted_inlp, leace_data):
    p = prov("dim", extra={"note": "x"})
    direction = Direction(torch.randn(D), p)
    subspace = planted_inlp.to_subspace(prov("inlp"))
    eraser = leace_data[-1]
    for name, obj in [("dir", direction), ("sub", subspace), ("era", eraser)]:
        obj.save(tmp_path / name)
        loaded = load_artifact(tmp_path / f"{name}.safetensors", hidden_size=D)
        assert type(loaded) is type(obj)
        assert loaded.provenance == obj.provenance
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, torch.Tensor):
                assert torch.equal(getattr(loaded, f.name), value), f.name
        with pytest.raises(RefusalLabError, match=rf"hidden size {D}.*hidden size {D + 8}"):
            load_artifact(tmp_path / name, hidden_size=D + 8)
    assert subspace.provenance.extra["inlp"]["stopped"] == "chance"
    assert subspace.provenance.extra["order"] == "iteration"
    assert subspace.provenance.extra["inlp"]["first_accuracy"] == planted_inlp.first_accuracy
    assert isinstance(load_artifact(tmp_path / "era"), AffineEraser)


def test_nan_rejected():
    v = torch.randn(D)
    v[3] = float("nan")
    with pytest.raises(RefusalLabError, match="NaN"):
        Direction(v, prov())
    with pytest.raises(RefusalLabError, match="NaN"):
        Subspace(v[None], prov())
    with pytest.raises(RefusalLabError, match="NaN"):
        AffineEraser(v[:, None], torch.zeros(1, D), torch.zeros(D), prov())
    with pytest.raises(RefusalLabError, match="NaN"):
        stack_subspace([v], prov())
