import pytest
import torch
from conftest import tiny_model

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.interventions import (
    Addition,
    Intervention,
    Projection,
    apply_interventions,
    orthogonalize_weights,
    scope_layers,
)

PROMPT_IDS = torch.tensor([[5, 20, 30, 40, 50, 60, 70], [7, 21, 33, 44, 55, 66, 77]])


def logits(lm):
    with torch.no_grad():
        return lm.model(input_ids=PROMPT_IDS).logits


def orthonormal(k, d=64, seed=1):
    return torch.linalg.qr(torch.randn(d, k, generator=torch.Generator().manual_seed(seed)))[0].T


def test_projection_math():
    basis = orthonormal(3)
    h = torch.randn(5, 64)
    eye = torch.eye(64)
    dense = eye - basis.T @ basis
    torch.testing.assert_close(Projection(basis)(h), h @ dense)
    torch.testing.assert_close(Projection(basis, alpha=2.0)(h), h @ (2 * dense - eye))
    twice = Projection(basis, alpha=2.0)(Projection(basis, alpha=2.0)(h))
    torch.testing.assert_close(twice, h, atol=1e-5, rtol=1e-5)
    assert Projection(basis).stacking == "each" and Projection(basis, 2.0).stacking == "once"


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text"])
def test_post_norm_families_refuse_weight_baking(model_type):
    lm = tiny_model(model_type)
    with pytest.raises(RefusalLabError, match="post|normalises"):
        orthogonalize_weights(lm, Projection(orthonormal(1)))


def test_non_idempotent_maps_cannot_be_baked():
    lm = tiny_model("llama")
    with pytest.raises(RefusalLabError, match="flip"):
        orthogonalize_weights(lm, Projection(orthonormal(1), alpha=2.0))


def test_hooks_are_removed_even_on_error():
    lm = tiny_model("llama")
    baseline = logits(lm)
    with pytest.raises(RuntimeError):
        with apply_interventions(lm, [Intervention(Addition(torch.ones(64), 3.0), layers=(1,))]):
            assert not torch.allclose(logits(lm), baseline)
            raise RuntimeError("boom")
    torch.testing.assert_close(logits(lm), baseline)


def test_actadd_at_one_layer_only_changes_later_layers():
    lm = tiny_model("qwen2")
    seen = {}
    layers = lm.adapter.layers(lm.model)
    handles = [layer.register_forward_pre_hook(lambda m, a, k, i=i: seen.__setitem__(i, (a[0] if a else
               k["hidden_states"]).clone()), with_kwargs=True) for i, layer in enumerate(layers)]
    logits(lm)
    base = dict(seen)
    vector = torch.randn(64)
    with apply_interventions(lm, [Intervention(Addition(vector, 2.0), layers=(1,), sites=("resid_pre",))]):
        logits(lm)
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(seen[0], base[0])
    assert not torch.allclose(seen[2], base[2])


def test_flip_at_all_layers_reflects_each_residual_state_once():
    """r_l (input of layer l) must equal P_α(e + Σ_{j<l} (a_j + m_j)) with the *raw* writes of the flipped run."""
    lm = tiny_model("llama", n_layers=4)
    flip = Projection(orthonormal(2), alpha=2.0)
    layers = lm.adapter.layers(lm.model)
    raw, resid = {}, {}
    handles = [lm.model.get_input_embeddings().register_forward_hook(lambda m, a, o: raw.__setitem__("e", o))]
    for i, layer in enumerate(layers):
        handles.append(layer.self_attn.register_forward_hook(lambda m, a, o, i=i: raw.__setitem__(("a", i), o[0])))
        handles.append(layer.mlp.register_forward_hook(lambda m, a, o, i=i: raw.__setitem__(("m", i), o)))
    intervention = Intervention(flip, layers=tuple(range(4)), placement="writes")
    assert intervention.hook_points()[0] == (0, "resid_pre")
    assert sum(site == "resid_pre" for _, site in intervention.hook_points()) == 1
    with apply_interventions(lm, [intervention]):
        for i, layer in enumerate(layers):  # registered after the flip's hooks: they see the flipped input
            handles.append(layer.register_forward_pre_hook(
                lambda m, a, k, i=i: resid.__setitem__(i, a[0] if a else k["hidden_states"]), with_kwargs=True))
        logits(lm)
    for handle in handles:
        handle.remove()
    unflipped = raw["e"]
    for i in range(4):
        torch.testing.assert_close(resid[i], flip(unflipped), atol=1e-5, rtol=1e-4)
        unflipped = unflipped + raw[("a", i)] + raw[("m", i)]


def test_scope_layers():
    assert scope_layers("layer", 3, 10) == (3,)
    assert scope_layers("all", 3, 4) == (0, 1, 2, 3)
    assert scope_layers("top50", 3, 10, ranked_layers=[5, 5, 2, 7, 1]) == (5, 2)
    with pytest.raises(RefusalLabError, match="top50"):
        scope_layers("top50", 3, 10)
    with pytest.raises(RefusalLabError, match="unknown scope"):
        scope_layers("some", 3, 10)


def test_placements_hook_points():
    flip, proj = Projection(orthonormal(1), alpha=2.0), Projection(orthonormal(1))
    each = Intervention(proj, layers=(2, 0))
    assert each.placement == "each" and len(each.hook_points()) == 6 and each.hook_points()[0] == (0, "resid_pre")
    once = Intervention(flip, layers=(2, 0))  # a flip defaults to the input variant, at resid_pre only
    assert once.placement == "input" and once.sites == ("resid_pre",) and once.hook_points() == [(0, "resid_pre")]
    writes = Intervention(flip, layers=(2, 0), placement="writes")
    assert writes.hook_points() == [(0, "resid_pre"), (0, "attn_out"), (0, "mlp_out"), (2, "attn_out"),
                                    (2, "mlp_out")]
    only_writes = Intervention(flip, layers=(0, 1), sites=("mlp_out",), placement="writes")
    assert only_writes.hook_points() == [(0, "mlp_out"), (1, "mlp_out")]
    with pytest.raises(RefusalLabError, match="no layers"):
        Intervention(proj, layers=())
