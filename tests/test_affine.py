"""Affine maps (LEACE erasers, centred projections) are applied only at the layer they were fitted at; multi-layer
scopes use one fit per layer. References are computed by hand (explicit formulas, plain torch hooks)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from hand_hooks import capture_inputs, hand_hooks, logits, stream

from refusal_lab.core.artifacts import MethodArtifacts, Provenance, Subspace, load_artifact
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.fitting.leace import fit_leace, fit_leace_per_layer, per_layer_means
from refusal_lab.interventions import Intervention, apply_interventions
from refusal_lab.interventions.affine import CenteredProjection, LinearPart
from refusal_lab.interventions.factory import build_intervention

D, N_LAYERS, N_POSITIONS, N = 64, 4, 3, 120
ARCHS = ["llama", "qwen2", "gemma2"]
PROV = Provenance("tiny", "leace", D, None, None, "h", {"n_layers": N_LAYERS})


pytestmark = pytest.mark.usefixtures("one_thread")


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def synthetic():
    """``acts [N, L, P, d]``: at layer j, harmful rows (first half, y = 1) shifted by 3·u_j, a different unit
    direction per layer, plus a per-layer offset and noise; ``y [N]``."""
    g = _generator(0)
    y = torch.cat([torch.ones(N // 2), torch.zeros(N // 2)]).long()
    u = torch.nn.functional.normalize(torch.randn(N_LAYERS, D, generator=g), dim=-1)
    offset = 2.0 * torch.randn(N_LAYERS, D, generator=g)
    acts = torch.randn(N, N_LAYERS, N_POSITIONS, D, generator=g) + offset[None, :, None]
    return acts + 3.0 * y[:, None, None, None] * u[None, :, None, :], y


ACTS, Y = synthetic()
ERASERS = fit_leace_per_layer(ACTS, Y, PROV, position=-1)


def erase(eraser):
    """The eraser by hand: ``h ↦ h − ((h − b) Rᵀ) Lᵀ``."""
    return lambda h: h - ((h - eraser.bias) @ eraser.proj_right.T) @ eraser.proj_left.T


def erase_linear(eraser):
    return lambda w: w - (w @ eraser.proj_right.T) @ eraser.proj_left.T


def gap(X, y):
    """Largest coordinate of the difference of the class means."""
    return float((X[y == 1].mean(0) - X[y == 0].mean(0)).abs().max())


def test_per_layer_leace_is_rank_1_and_equalises_class_means_at_its_own_layer_only():
    assert sorted(ERASERS) == list(range(N_LAYERS))
    for j, eraser in ERASERS.items():
        assert eraser.rank == 1 and eraser.fitted_layer == j
        assert eraser.valid_positions == (-1,) and eraser.provenance.position == -1
        X = ACTS[:, j, -1]
        assert gap(X, Y) > 1.0
        assert gap(erase(eraser)(X), Y) < 1e-4  # the class means coincide after erasure (hand formula)
        other = ACTS[:, (j + 1) % N_LAYERS, -1]
        assert gap(erase(eraser)(other), Y) > 1.0  # layer j's eraser does not erase another layer's concept


def test_pooled_fit_uses_every_post_instruction_position():
    pooled = fit_leace_per_layer(ACTS, Y, PROV, layers=[1, 3])
    assert sorted(pooled) == [1, 3]
    for j, eraser in pooled.items():
        assert eraser.valid_positions == (-3, -2, -1) and eraser.provenance.position is None
        erased = erase(eraser)(ACTS[:, j])  # [N, P, d]
        harmful, harmless = erased[Y == 1].mean((0, 1)), erased[Y == 0].mean((0, 1))
        assert float((harmful - harmless).abs().max()) < 1e-4
    means = per_layer_means(ACTS, layers=[0, 2], position=-2)
    torch.testing.assert_close(means[2], ACTS[:, 2, -2].mean(0))
    torch.testing.assert_close(per_layer_means(ACTS)[1], ACTS[:, 1].mean((0, 1)))


def test_recorded_layer_and_positions_survive_save_and_load(tmp_path):
    loaded = load_artifact(ERASERS[2].save(tmp_path / "e"), hidden_size=D)
    assert loaded.fitted_layer == 2 and loaded.valid_positions == (-1,)
    single = fit_leace(ACTS[:, 0, -2], Y, Provenance("tiny", "leace", D, 0, -2))
    assert single.fitted_layer == 0 and single.valid_positions == (-2,)


def test_per_layer_fit_errors():
    with pytest.raises(RefusalLabError, match=r"\[n, L, P, d\]"):
        fit_leace_per_layer(ACTS[:, 0], Y, PROV)
    with pytest.raises(RefusalLabError, match="position -4 is out of range"):
        fit_leace_per_layer(ACTS, Y, PROV, position=-4)
    with pytest.raises(RefusalLabError, match="layer 9 is out of range"):
        fit_leace_per_layer(ACTS, Y, PROV, layers=[9])
    with pytest.raises(RefusalLabError, match="labels"):
        fit_leace_per_layer(ACTS, Y[:-1], PROV)


@pytest.mark.parametrize("arch", ARCHS)
def test_eraser_at_its_fitted_layer_equals_the_hand_eraser(arch):
    lm = tiny_model(arch, n_layers=N_LAYERS)
    eraser = ERASERS[1]
    built = build_intervention("leace", MethodArtifacts(leace=eraser), n_layers=N_LAYERS)  # its own layer
    with hand_hooks(lm, {1: erase(eraser)}, {1: erase_linear(eraser)}):
        expected = logits(lm)
    with apply_interventions(lm, built):
        got = logits(lm)
    assert (expected - logits(lm)).abs().max() > 1e-3
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_per_layer_leace_at_scope_all_applies_each_layers_own_eraser(arch):
    lm = tiny_model(arch, n_layers=N_LAYERS)
    built = build_intervention("leace", MethodArtifacts(leace=ERASERS[1]), scope="all", n_layers=N_LAYERS,
                               erasers=ERASERS)
    assert [(i.layers, i.sites) for i in built] == [((j,), sites) for j in range(N_LAYERS)
                                                    for sites in (("resid_pre",), ("attn_out", "mlp_out"))]
    own = {j: erase(e) for j, e in ERASERS.items()}, {j: erase_linear(e) for j, e in ERASERS.items()}
    with hand_hooks(lm, *own):
        expected = logits(lm)
    one = ERASERS[1]  # the mistake this prevents: one eraser at every layer
    with hand_hooks(lm, {j: erase(one) for j in range(N_LAYERS)}, {j: erase_linear(one) for j in range(N_LAYERS)}):
        wrong = logits(lm)
    with capture_inputs(lm) as resid, apply_interventions(lm, built):  # resid: before layer j+1's own eraser
        got = logits(lm)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert (got - wrong).abs().max() > 1e-3
    base = stream(lm)
    for j, eraser in ERASERS.items():  # after layer j the stream lies on {h : R_j (h − b_j) = 0}
        assert ((resid[j + 1] - eraser.bias) @ eraser.proj_right.T).abs().max() < 1e-4
        assert ((base[j + 1] - eraser.bias) @ eraser.proj_right.T).abs().max() > 1e-2  # not trivially true


V = torch.linalg.qr(torch.randn(D, 2, generator=_generator(5)))[0].T
CENTERS = {j: torch.randn(D, generator=_generator(20 + j)) for j in range(N_LAYERS)}


def inlp_artifacts():
    extra = {"center": CENTERS[1].tolist(), "n_layers": N_LAYERS, "ranked_layers": [1, 2, 0, 3]}
    return MethodArtifacts(inlp=Subspace(V, Provenance("tiny", "inlp", D, 1, -1, "h", extra)))


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_centred_nullspace_at_scope_all_uses_each_layers_centre(arch):
    lm = tiny_model(arch, n_layers=N_LAYERS)
    built = build_intervention("nullspace", inlp_artifacts(), scope="all", center=True, centers=CENTERS,
                               center_positions=[-1])
    centred = [i.transform for i in built if isinstance(i.transform, CenteredProjection)]
    assert [(c.fitted_layer, c.valid_positions) for c in centred] == [(j, (-1,)) for j in range(N_LAYERS)]

    def project(c):
        return lambda h: h - ((h - (0 if c is None else c)) @ V.T) @ V

    writes = {j: project(None) for j in range(N_LAYERS)}
    with hand_hooks(lm, {j: project(CENTERS[j]) for j in range(N_LAYERS)}, writes):
        expected = logits(lm)
    with hand_hooks(lm, {j: project(CENTERS[1]) for j in range(N_LAYERS)}, writes):
        wrong = logits(lm)  # one centre everywhere
    with apply_interventions(lm, built):
        got = logits(lm)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert (got - wrong).abs().max() > 1e-3


def test_affine_maps_elsewhere_than_their_fitted_layer_are_refused():
    arts = MethodArtifacts(leace=ERASERS[1])
    fix = r"fitted at layer 1 .*fit one per layer"
    with pytest.raises(RefusalLabError, match=fix):
        build_intervention("leace", arts, layer=0, n_layers=N_LAYERS)
    with pytest.raises(RefusalLabError, match=fix):
        build_intervention("leace", arts, scope="all", n_layers=N_LAYERS)
    # with per-layer erasers given, a layer without one (nothing fitted there to erase) is left alone
    partial = build_intervention("leace", arts, scope="all", n_layers=N_LAYERS, erasers={0: ERASERS[0], 2: ERASERS[2]})
    assert {layer for iv in partial for layer, _ in iv.hook_points()} == {0, 2}
    with pytest.raises(RefusalLabError, match="fitted at layer 1 .*not at layers \\[2\\]"):
        Intervention(ERASERS[1], layers=(2,), sites=("resid_pre",))
    with pytest.raises(RefusalLabError, match=fix):
        Intervention(LinearPart(ERASERS[1]), layers=(2,), sites=("mlp_out",))
    with pytest.raises(RefusalLabError, match=fix):
        Intervention(CenteredProjection(V, 1.0, CENTERS[1], fitted_layer=1), layers=(0, 1), sites=("resid_pre",))
    unplaced = fit_leace(ACTS[:, 0, -1], Y, PROV)
    with pytest.raises(RefusalLabError, match="records no layer"):
        build_intervention("leace", MethodArtifacts(leace=unplaced), layer=0, n_layers=N_LAYERS)
    inlp = inlp_artifacts()
    for kind in ("nullspace", "rank-k"):  # centred multi-layer scopes need their centres
        with pytest.raises(RefusalLabError, match=fix):
            build_intervention(kind, inlp, scope="all", center=True)
    with pytest.raises(RefusalLabError, match=fix):  # one layer's centre missing
        build_intervention("nullspace", inlp, scope="all", center=True, centers={0: CENTERS[0], 2: CENTERS[2]})
    with pytest.raises(RefusalLabError, match=fix):  # the flip's centre is needed at the first scoped layer (0)
        build_intervention("flip", inlp, scope="top50", center=True, ranked_layers=[1, 0, 2, 3])
    (flip,) = build_intervention("flip", inlp, scope="top50", center=True, ranked_layers=[1, 2, 0, 3])
    assert flip.transform.fitted_layer == 1 and flip.hook_points() == [(1, "resid_pre")]  # its own layer: fine
    with pytest.raises(RefusalLabError, match="pass center=True"):
        build_intervention("nullspace", inlp, centers=CENTERS)
    with pytest.raises(RefusalLabError, match="erasers= applies to leace only"):
        build_intervention("nullspace", inlp, erasers=ERASERS)
