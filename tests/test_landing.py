"""Where activations land: the cluster coordinate by hand, and the landing of a flip against the stream computed
with plain hooks (tests/hand_hooks.py) on a tiny model."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from hand_hooks import capture_inputs, hand_hooks

from refusal_lab.evaluation.landing import cluster_coordinate, landing, nearer_harmful
from refusal_lab.core.artifacts import MethodArtifacts, Provenance, Subspace
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.interventions.factory import build_intervention

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["bake a cake", "write a short poem about rain", "explain rainbows"]


def test_cluster_coordinate_and_nearer_harmful_by_hand():
    harmful, harmless = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    h = torch.tensor([[1.0, 5.0], [2.0, 3.0], [-1.0, 0.0], [1.5, 0.0], [0.9, 0.0]])
    # t = (h − μ₀)·(μ₁ − μ₀)/‖μ₁ − μ₀‖² = 2 h₀ / 4
    assert cluster_coordinate(h, harmful, harmless).tolist() == pytest.approx([0.5, 1.0, -0.5, 0.75, 0.45])
    assert nearer_harmful(h, harmful, harmless).tolist() == [False, True, False, True, False]  # a tie is not nearer
    shifted = cluster_coordinate(h + torch.tensor([3.0, -1.0]), harmful + torch.tensor([3.0, -1.0]),
                                 harmless + torch.tensor([3.0, -1.0]))
    assert shifted.tolist() == pytest.approx([0.5, 1.0, -0.5, 0.75, 0.45])  # translation-invariant
    with pytest.raises(RefusalLabError, match="coincide"):
        cluster_coordinate(h, harmless, harmless)


def test_landing_of_an_input_flip_matches_the_hand_computed_stream():
    lm = tiny_model("qwen2", n_layers=4)
    d, n_layers, fitted, position = lm.hidden_size, lm.n_layers, 2, -1
    g = torch.Generator().manual_seed(3)
    harmful_mean = torch.randn(n_layers, lm.n_post_instruction, d, generator=g, dtype=torch.float64)
    harmless_mean = torch.randn(n_layers, lm.n_post_instruction, d, generator=g, dtype=torch.float64)
    gap = (harmful_mean - harmless_mean)[fitted, position].float()
    u = gap / gap.norm()  # reflect along the cluster axis, so the flip moves the coordinate
    provenance = Provenance("tiny", "inlp", d, fitted, position, "h", {"n_layers": n_layers})
    flip = build_intervention("flip", MethodArtifacts(inlp=Subspace(u[None], provenance)), layer=fitted,
                              scope="layer", n_layers=n_layers, alpha=2.0, flip_variant="input")
    where = landing(lm, PROMPTS, flip, harmful_mean, harmless_mean, position, batch_size=2)

    reflect = lambda h: h - 2.0 * (h @ u)[..., None] * u  # noqa: E731  the flip by hand, at layer 2's input
    seen_by_prompt = []
    for text in lm.format(PROMPTS):  # one prompt at a time: no padding, no prefix cache
        ids = lm.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        with hand_hooks(lm, inputs={fitted: reflect}), capture_inputs(lm) as seen, torch.no_grad():
            lm.model(input_ids=ids)
        seen_by_prompt.append({layer: h[0, position].double() for layer, h in seen.items()})
    for layer in range(n_layers):
        h = torch.stack([seen[layer] for seen in seen_by_prompt])
        mu1, mu0 = harmful_mean[layer, position], harmless_mean[layer, position]
        expected = float(((h - mu0) @ (mu1 - mu0)).mean() / (mu1 - mu0).dot(mu1 - mu0))
        assert where.coordinate[layer] == pytest.approx(expected, abs=1e-4)
        near = float(((h - mu1).norm(dim=-1) < (h - mu0).norm(dim=-1)).double().mean())
        assert where.nearer_harmful[layer] == near
    clean = landing(lm, PROMPTS, [], harmful_mean, harmless_mean, position, batch_size=2)
    assert clean.coordinate[:fitted] == pytest.approx(where.coordinate[:fitted], abs=1e-5)  # before the flip
    assert clean.coordinate[fitted] != pytest.approx(where.coordinate[fitted], abs=1e-3)
