"""The intervention factory: every kind, scope and site from a method's artifact; baking (tiny models, synthetic
activations)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from refusal_lab.core.artifacts import Direction, MethodArtifacts, Provenance
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.vocabulary import KINDS
from refusal_lab.fitting.classifier import classifier_direction
from refusal_lab.fitting.dim import cosine_matrix
from refusal_lab.fitting.inlp import INLPConfig, fit_inlp
from refusal_lab.fitting.leace import fit_leace
from refusal_lab.fitting.subspace import stack_subspace
from refusal_lab.interventions import Addition, Intervention, apply_interventions
from refusal_lab.interventions.batched import batched_scores
from refusal_lab.interventions.factory import build_intervention
from refusal_lab.interventions.weights import bake_interventions
from refusal_lab.interventions.scoring import last_token_logprobs, refusal_scores

D = 64
PROMPT_IDS = torch.tensor([[5, 20, 30, 40, 50, 60, 70], [7, 21, 33, 44, 55, 66, 77]])
HARMFUL = ["do a bad thing now", "another bad request", "make trouble please", "cause harm today"]
HARMLESS = ["bake a cake", "write a poem", "plan a picnic", "explain rainbows"]
LOOSE = dict(kl_threshold=1e9, induce_threshold=-1e9, min_inlp_accuracy=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def logits(lm):
    with torch.no_grad():
        return lm.model(input_ids=PROMPT_IDS).logits


def prov(method, layer=1, position=-1, n_layers=3, **extra):
    return Provenance("tiny", method, D, layer, position, "hash",
                      {"n_layers": n_layers, "ranked_layers": [1, 0, 2][:n_layers], **extra})


def planted(n=160, seed=0, strength=3.0):
    """Harmful rows shifted along a planted direction, plus noise (labels 1 = harmful first)."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(D, generator=g), dim=0)
    y = torch.cat([torch.ones(n // 2), torch.zeros(n // 2)]).long()
    X = torch.randn(n, D, generator=g) + strength * y[:, None] * direction
    return X, y, direction


@pytest.fixture(scope="module")
def artifacts():
    X, y, _ = planted()
    result = fit_inlp(X, y, INLPConfig(max_iterations=4, stop="fixed"))
    dim = Direction(X[y == 1].mean(0) - X[y == 0].mean(0), prov("dim"))
    return MethodArtifacts(
        dim=dim,
        inlp=result.to_subspace(prov("inlp", center=result.mean.tolist())),
        classifier=classifier_direction(result, dim),
        leace=fit_leace(X, y, prov("leace")),
        subspace=stack_subspace([dim.vector, torch.randn(D), torch.randn(D)], prov("subspace")),
    ), result


# --- the factory ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_builds_and_changes_logits(artifacts, kind):
    arts, _ = artifacts
    lm = tiny_model("qwen2")
    base = logits(lm)
    built = build_intervention(kind, arts, n_layers=lm.n_layers, scale=4.0 if "actadd" in kind else None)
    assert built and all(isinstance(i, Intervention) for i in built)
    with apply_interventions(lm, built):
        changed = logits(lm)
    assert not torch.allclose(changed, base, atol=1e-4)
    torch.testing.assert_close(logits(lm), base)  # hooks removed
    assert build_intervention("none", arts) == []


def test_factory_defaults_match_the_seed_pipeline(artifacts):
    arts, _ = artifacts
    (ablate,) = build_intervention("ablate", arts, n_layers=3)
    assert ablate.layers == (0, 1, 2) and set(ablate.sites) == {"resid_pre", "attn_out", "mlp_out"}
    torch.testing.assert_close(ablate.transform.basis, arts.dim.unit[None, :])
    (actadd,) = build_intervention("actadd", arts, n_layers=3, scale=-2.0)
    assert actadd.layers == (1,) and actadd.sites == ("resid_pre",)
    assert isinstance(actadd.transform, Addition) and actadd.transform.scale == -2.0
    (top,) = build_intervention("nullspace", arts, scope="top50", n_layers=3, sites=["mlp_out"])
    assert top.layers == (0, 1) and top.sites == ("mlp_out",)  # ranked [1, 0, 2] → first half (rounded up)
    (sub,) = build_intervention("subspace", arts, k=2, n_layers=3)
    assert sub.transform.basis.shape == (2, D) and sub.layers == (0, 1, 2)


def test_nullspace_is_P_and_flip_squared_is_identity(artifacts):
    arts, result = artifacts
    h = torch.randn(10, D)
    (null,) = build_intervention("nullspace", arts, n_layers=3)
    (flip,) = build_intervention("flip", arts, n_layers=3)
    (flip1,) = build_intervention("flip", arts, n_layers=3, alpha=1.0)
    P = result.projection()
    torch.testing.assert_close(null.transform(h), h @ P, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flip1.transform(h), null.transform(h))  # P_1 = P
    torch.testing.assert_close(flip.transform(h), h @ (2 * P - torch.eye(D)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flip.transform(flip.transform(h)), h, atol=1e-5, rtol=1e-5)  # P_2² = I
    for k in (1, 3):
        (rank_k,) = build_intervention("rank-k", arts, k=k, n_layers=3)
        torch.testing.assert_close(rank_k.transform(h), h @ result.projection(k), atol=1e-5, rtol=1e-5)


def test_classifier_actadd_norm_equals_dim_norm(artifacts):
    arts, result = artifacts
    (clf,) = build_intervention("classifier-actadd", arts, n_layers=3, scale=1.0)
    assert clf.transform.vector.norm().item() == pytest.approx(arts.dim.norm, rel=1e-5)
    w = result.weights[0]
    assert float(cosine_matrix(clf.transform.vector, w)) == pytest.approx(1.0, abs=1e-5)


def test_factory_errors(artifacts):
    arts, _ = artifacts
    with pytest.raises(RefusalLabError, match="unknown intervention 'explode'"):
        build_intervention("explode", arts, n_layers=3)
    with pytest.raises(RefusalLabError, match="no leace artifact.*extract --method leace"):
        build_intervention("leace", MethodArtifacts(dim=arts.dim), n_layers=3)
    with pytest.raises(RefusalLabError, match="no flip artifact.*extract --method flip"):
        build_intervention("flip", MethodArtifacts(dim=arts.dim), n_layers=3)
    with pytest.raises(RefusalLabError, match="k must be between"):
        build_intervention("rank-k", arts, k=99, n_layers=3)
    with pytest.raises(RefusalLabError, match="unknown scope"):
        build_intervention("nullspace", arts, scope="everywhere", n_layers=3)
    with pytest.raises(RefusalLabError, match="unknown site"):
        build_intervention("nullspace", arts, sites=["resid_post"], n_layers=3)
    with pytest.raises(RefusalLabError, match="top50"):
        build_intervention("nullspace", arts, scope="top50", n_layers=3, ranked_layers=[])
    with pytest.raises(RefusalLabError, match="out of range"):
        build_intervention("flip", arts, layer=7, n_layers=3)


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3", "gemma", "phi3"])
@pytest.mark.parametrize("kind,k", [("rank-k", 2), ("nullspace", None)])
def test_factory_projections_equal_their_baked_weights(artifacts, model_type, kind, k):
    arts, _ = artifacts
    lm = tiny_model(model_type)
    built = build_intervention(kind, arts, scope="all", k=k, n_layers=lm.n_layers)
    with apply_interventions(lm, built):
        hooked = logits(lm)
    assert not torch.allclose(hooked, logits(lm), atol=1e-4)
    bake_interventions(lm, built)
    torch.testing.assert_close(logits(lm), hooked, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text"])
def test_post_norm_families_refuse_baking_through_the_factory(artifacts, model_type):
    arts, _ = artifacts
    lm = tiny_model(model_type)
    with pytest.raises(RefusalLabError, match="normalises block outputs"):
        bake_interventions(lm, build_intervention("nullspace", arts, scope="all", n_layers=lm.n_layers))


def test_only_full_scope_projections_can_be_baked(artifacts):
    arts, _ = artifacts
    lm = tiny_model("llama")
    with pytest.raises(RefusalLabError, match="scope 'all'"):
        bake_interventions(lm, build_intervention("nullspace", arts, scope="layer", n_layers=lm.n_layers))
    with pytest.raises(RefusalLabError, match="hooks"):
        bake_interventions(lm, build_intervention("leace", arts, scope="layer", n_layers=lm.n_layers))
    with pytest.raises(RefusalLabError, match="flip"):
        bake_interventions(lm, build_intervention("flip", arts, scope="all", n_layers=lm.n_layers))


def _capture_run(lm, interventions):
    """Raw writes (embedding, attention, MLP outputs as produced) and the input of every layer and of the final
    norm, under ``interventions``."""
    layers = lm.adapter.layers(lm.model)
    raw, resid, handles = {}, {}, []
    handles.append(lm.model.get_input_embeddings().register_forward_hook(lambda m, a, o: raw.__setitem__("e", o)))
    for i, layer in enumerate(layers):
        handles.append(layer.self_attn.register_forward_hook(lambda m, a, o, i=i: raw.__setitem__(("a", i), o[0])))
        handles.append(layer.mlp.register_forward_hook(lambda m, a, o, i=i: raw.__setitem__(("m", i), o)))
    with apply_interventions(lm, interventions):
        for i, layer in enumerate(layers):  # registered after the intervention's hooks: they see its output
            handles.append(layer.register_forward_pre_hook(
                lambda m, a, k, i=i: resid.__setitem__(i, a[0] if a else k["hidden_states"]), with_kwargs=True))
        handles.append(lm.model.model.norm.register_forward_pre_hook(
            lambda m, a: resid.__setitem__(len(layers), a[0])))
        logits(lm)
    for handle in handles:
        handle.remove()
    return raw, resid


@pytest.mark.parametrize("scope,ranked", [("top50", [2, 0, 3, 1]), ("all", [])])
def test_flip_at_several_layers_reflects_each_state_once(artifacts, scope, ranked):
    """Once-semantics: with scoped layers S, r_l = F(e + Σ_{j<l, j∈S} w_j) + Σ_{j<l, j∉S} w_j for the raw writes
    w_j = a_j + m_j of the flipped run (each contribution reflected exactly once, never twice)."""
    arts, _ = artifacts
    lm = tiny_model("llama", n_layers=4)
    built = build_intervention("flip", arts, scope=scope, ranked_layers=ranked, n_layers=4, layer=0,
                               flip_variant="writes")
    (flip,) = built
    scoped = set(flip.layers)
    assert scoped == ({0, 2} if scope == "top50" else {0, 1, 2, 3})
    assert [p for p in flip.hook_points() if p[1] == "resid_pre"] == [(0, "resid_pre")]
    raw, resid = _capture_run(lm, built)
    F = flip.transform
    inside, outside = raw["e"], torch.zeros_like(raw["e"])
    for i in range(5):
        torch.testing.assert_close(resid[i], F(inside) + outside, atol=1e-5, rtol=1e-4)
        if i < 4:
            write = raw[("a", i)] + raw[("m", i)]
            inside, outside = (inside + write, outside) if i in scoped else (inside, outside + write)


def test_centered_flip_is_an_affine_reflection_through_the_training_mean(artifacts):
    arts, result = artifacts
    c, P = result.mean, result.projection()
    h = torch.randn(10, D) + 5.0
    (null,) = build_intervention("nullspace", arts, n_layers=3, center=True, sites=["resid_pre"])
    (flip,) = build_intervention("flip", arts, n_layers=3, center=True, sites=["resid_pre"])
    torch.testing.assert_close(null.transform(h), c + (h - c) @ P, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(flip.transform(h), c + (h - c) @ (2 * P - torch.eye(D)), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(flip.transform(flip.transform(h)), h, atol=1e-4, rtol=1e-5)  # an involution
    torch.testing.assert_close(flip.transform(c[None, :]), c[None, :], atol=1e-5, rtol=1e-5)  # fixes the centre
    assert flip.transform.stacking == "once" and null.transform.stacking == "each"
    built = build_intervention("flip", arts, n_layers=3, center=True, flip_variant="writes")  # linear part on writes
    assert [(type(i.transform).__name__, i.sites) for i in built] == [
        ("CenteredProjection", ("resid_pre",)), ("Projection", ("attn_out", "mlp_out"))]
    with pytest.raises(RefusalLabError, match="records no centre"):
        build_intervention("flip", MethodArtifacts(inlp=arts.subspace), n_layers=3, center=True)
    with pytest.raises(RefusalLabError, match="center applies"):
        build_intervention("leace", arts, n_layers=3, center=True)


def test_centered_flip_at_all_layers_reflects_each_state_once(artifacts):
    """r_l = c + (e + Σ_{j<l} w_j − c) P_α for the raw writes w_j of the flipped run."""
    arts, result = artifacts
    lm = tiny_model("llama", n_layers=4)
    built = build_intervention("flip", arts, scope="all", n_layers=4, center=True, flip_variant="writes",
                               centers={0: result.mean})
    raw, resid = _capture_run(lm, built)
    F = built[0].transform
    inside = raw["e"]
    for i in range(5):
        torch.testing.assert_close(resid[i], F(inside), atol=1e-5, rtol=1e-4)
        if i < 4:
            inside = inside + raw[("a", i)] + raw[("m", i)]


def test_leace_keeps_the_stream_on_the_erased_subspace(artifacts):
    """Eraser at resid_pre + its linear part on the writes: R (h − b) = 0 for the residual after the layer."""
    arts, _ = artifacts
    lm = tiny_model("llama", n_layers=3)
    eraser = arts.leace
    built = build_intervention("leace", arts, layer=1, n_layers=3)
    assert [i.sites for i in built] == [("resid_pre",), ("attn_out", "mlp_out")]
    _, resid = _capture_run(lm, built)
    _, base = _capture_run(lm, [])
    for i in (1, 2):
        erased = (resid[i] - eraser.bias) @ eraser.proj_right.T
        assert erased.abs().max() < 1e-4
        assert ((base[i] - eraser.bias) @ eraser.proj_right.T).abs().max() > 1e-2  # not trivially true
    torch.testing.assert_close(resid[0], base[0])


# --- batched scoring and per-method selection -----------------------------------------------------------------


def test_batched_scores_equal_one_at_a_time(artifacts):
    arts, _ = artifacts
    lm = tiny_model("qwen2")
    base = last_token_logprobs(lm, HARMLESS)
    candidates = [build_intervention("flip", arts, layer=1, n_layers=3),
                  build_intervention("leace", arts, layer=1, n_layers=3),
                  build_intervention("classifier-actadd", arts, layer=2, n_layers=3, scale=3.0),
                  build_intervention("nullspace", arts, scope="all", n_layers=3), []]
    scores, kl = batched_scores(lm, HARMLESS, candidates, base, rows_per_pass=8)  # 2 candidates per pass
    for i, ivs in enumerate(candidates):
        lp = last_token_logprobs(lm, HARMLESS, ivs)
        torch.testing.assert_close(scores[i], refusal_scores(lp, lm.refusal_token_ids), atol=1e-4, rtol=1e-4)
        expected_kl = (base.exp() * (base - lp)).sum(-1)
        torch.testing.assert_close(kl[i], expected_kl, atol=1e-4, rtol=1e-3)
    assert kl[-1].abs().max() < 1e-5
