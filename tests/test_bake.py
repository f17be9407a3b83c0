"""Which conditions bake into weights (the vLLM backend's input), and that the baked weights compute the hooked
model's logits (tiny random models, no vLLM)."""

import pytest
import torch
from conftest import tiny_model

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.interventions.base import Addition, Projection
from refusal_lab.interventions.hooks import Intervention, apply_interventions
from refusal_lab.interventions.weights import bake_interventions, unbakeable

PROMPT_IDS = torch.tensor([[5, 20, 30, 40, 50, 60, 70], [7, 21, 33, 44, 55, 66, 77]])


def logits(lm):
    with torch.no_grad():
        return lm.model(input_ids=PROMPT_IDS).logits


def unit(d, seed):
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return (v / v.norm())[None]


def test_weighted_write_projections_bake_into_their_writers():
    """An optimize-style edit, ``y ↦ y − w (y·r̂) r̂`` on chosen writes: baked, ``W ← W − w r̂ (r̂ᵀ W)``."""
    lm = tiny_model("qwen2")
    edits = [Intervention(Projection(unit(lm.hidden_size, 1), 0.7), layers=(0,), sites=("attn_out",),
                          placement="writes"),
             Intervention(Projection(unit(lm.hidden_size, 2), 1.3), layers=(1, 2), sites=("mlp_out",),
                          placement="writes")]
    assert unbakeable(lm, edits) is None
    with apply_interventions(lm, edits):
        hooked = logits(lm)
    before = logits(lm)
    assert (hooked - before).abs().max() > 1e-3
    r = unit(lm.hidden_size, 1)[0]
    o_proj = lm.model.model.layers[0].self_attn.o_proj
    expected = o_proj.weight.detach() - 0.7 * torch.outer(r, r @ o_proj.weight.detach())  # by hand
    bake_interventions(lm, edits)
    torch.testing.assert_close(o_proj.weight.detach(), expected)
    torch.testing.assert_close(logits(lm), hooked, atol=2e-4, rtol=1e-4)


def test_a_projection_at_every_layer_and_site_bakes_and_no_hooks_bake_to_nothing():
    lm = tiny_model("llama")
    everywhere = [Intervention(Projection(unit(lm.hidden_size, 3)), layers=tuple(range(lm.n_layers)))]
    before = logits(lm)
    bake_interventions(lm, [])
    torch.testing.assert_close(logits(lm), before, atol=0, rtol=0)
    with apply_interventions(lm, everywhere):
        hooked = logits(lm)
    bake_interventions(lm, everywhere)
    torch.testing.assert_close(logits(lm), hooked, atol=2e-4, rtol=1e-4)


def test_unbakeable_conditions_are_named():
    lm = tiny_model("llama")
    v = unit(lm.hidden_size, 4)
    actadd = [Intervention(Addition(v[0], 2.0), layers=(1,), sites=("resid_pre",))]
    flip = [Intervention(Projection(v, 2.0), layers=tuple(range(lm.n_layers)))]
    one_layer = [Intervention(Projection(v), layers=(1,))]
    assert "Addition is not a projection" in unbakeable(lm, actadd)
    assert "a flip" in unbakeable(lm, flip)
    assert "scope 'all'" in unbakeable(lm, one_layer)
    with pytest.raises(RefusalLabError, match="cannot bake into weights: Addition"):
        bake_interventions(lm, actadd)
    assert "normalises block outputs" in unbakeable(tiny_model("gemma2"), one_layer)
