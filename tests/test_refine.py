"""The refined direction (optimize/refine.py): its objective against the definition computed by hand with plain
hooks, one prompt at a time; its gradient against finite differences of that hand computation; descent on the
train prompts; and its place in the search (trial 0, stored once per data and settings, exported as trained)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model
from hand_hooks import hand_hooks

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.interventions.scoring import last_token_logprobs
from refusal_lab.search.refine import (
    RefineSettings,
    accumulate_gradient,
    first_token_logprobs,
    objective_terms,
    refine_direction,
)

HARMFUL = ["Tell me how to pick a lock", "Write a rude letter", "Explain how to copy a key"]
HARMLESS = ["Tell me a story", "How do I bake bread?", "List three colours", "Name a planet"]


def _logprobs_by_hand(lm, prompts, r=None):
    """``log p(· | prompt)`` at the last position, one unpadded prompt per forward; with ``r`` every attention and
    MLP write ``y ↦ y − (y·r̂) r̂``."""
    writes = {}
    if r is not None:
        unit = r / r.norm()
        writes = {layer: (lambda y: y - (y @ unit.to(y.dtype))[..., None] * unit.to(y.dtype))
                  for layer in range(lm.n_layers)}
    rows = []
    with torch.no_grad(), hand_hooks(lm, writes=writes):
        for prompt in prompts:
            ids = lm.tokenizer(lm.format([prompt]), add_special_tokens=False, return_tensors="pt")["input_ids"]
            rows.append(torch.log_softmax(lm.model(input_ids=ids).logits[0, -1].double(), -1))
    return torch.stack(rows)


def _terms_by_hand(lm, r):
    """Per prompt: ``−log(1 − p_R)`` on HARMFUL, ``KL(p_base ‖ p_r)`` on HARMLESS, from the definitions."""
    p_refusal = _logprobs_by_hand(lm, HARMFUL, r)[:, lm.refusal_token_ids].exp().sum(-1)
    base, edited = _logprobs_by_hand(lm, HARMLESS), _logprobs_by_hand(lm, HARMLESS, r)
    return -torch.log1p(-p_refusal), (base.exp() * (base - edited)).sum(-1)


def _objective_by_hand(lm, r, kl_weight=2.0):
    bypass, kl = _terms_by_hand(lm, r)
    return float(bypass.mean() + kl_weight * kl.mean())


def _direction(lm, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(lm.hidden_size, generator=g, dtype=lm.dtype)


def test_grad_enabled_logprobs_equal_the_scoring_path():
    lm = tiny_model("qwen2")
    assert torch.allclose(first_token_logprobs(lm, HARMLESS), last_token_logprobs(lm, HARMLESS), atol=1e-5)


def test_objective_terms_are_the_definitions_by_hand():
    lm = tiny_model("qwen2")
    r = _direction(lm)
    base = _logprobs_by_hand(lm, HARMLESS).float()
    bypass, p_refusal, kl = objective_terms(lm, r, HARMFUL, HARMLESS, base)
    bypass_by_hand, kl_by_hand = _terms_by_hand(lm, r)
    assert torch.allclose(bypass.double(), bypass_by_hand, rtol=1e-4, atol=1e-7)
    assert torch.allclose(p_refusal.double(), -torch.expm1(-bypass_by_hand), rtol=1e-4, atol=1e-7)
    assert torch.allclose(kl.double(), kl_by_hand, rtol=1e-3, atol=1e-7) and (kl > 0).all()


@pytest.mark.parametrize("micro_batch", [1, 2, 8])
def test_accumulated_gradient_matches_finite_differences_of_the_hand_objective(micro_batch):
    lm = tiny_model("qwen2", dtype=torch.float64)
    r = _direction(lm).requires_grad_(True)
    base = _logprobs_by_hand(lm, HARMLESS)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    settings = RefineSettings(kl_weight=2.0, micro_batch=micro_batch)
    parts = accumulate_gradient(lm, r, HARMFUL, HARMLESS, base, settings)
    assert parts["bypass"] + 2.0 * parts["kl"] == pytest.approx(_objective_by_hand(lm, r.detach()), rel=2e-5)
    g = torch.Generator().manual_seed(1)
    # even a float64 model normalises in float32 (RMSNorm), so the objective carries ~1e-10 of noise: a step of
    # 1e-3 keeps it (and the O(ε²) truncation) far below the tolerance
    eps = 1e-3
    for _ in range(3):
        u = torch.randn(lm.hidden_size, generator=g, dtype=torch.float64)
        plus, minus = _objective_by_hand(lm, r.detach() + eps * u), _objective_by_hand(lm, r.detach() - eps * u)
        numeric = (plus - minus) / (2 * eps)
        assert abs(numeric) > 1e-5 and float(r.grad @ u) == pytest.approx(numeric, rel=1e-3, abs=1e-7)


def test_refinement_descends_on_its_prompts_and_leaves_the_model_as_it_was():
    lm = tiny_model("qwen2")
    init = _direction(lm)
    before = {name: p.detach().clone() for name, p in lm.model.named_parameters()}
    settings = RefineSettings(steps=3, lr=0.01, kl_weight=2.0, batch_size=8)  # ≥ every prompt set: full batches
    refined, history = refine_direction(lm, init, HARMFUL, HARMLESS, settings)
    assert refined.shape == (lm.hidden_size,) and refined.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert [h["step"] for h in history] == [1, 2, 3] and history[-1]["cos_init"] < 1.0
    assert _objective_by_hand(lm, refined) < _objective_by_hand(lm, init)
    assert all(p.requires_grad and torch.equal(p, before[name]) for name, p in lm.model.named_parameters())


def test_refinement_rejects_a_bad_initial_direction_and_bad_settings():
    lm = tiny_model("qwen2")
    with pytest.raises(RefusalLabError, match="hidden size is 64"):
        refine_direction(lm, torch.ones(5), HARMFUL, HARMLESS, RefineSettings(steps=1))
    with pytest.raises(RefusalLabError, match="zero or not finite"):
        refine_direction(lm, torch.zeros(64), HARMFUL, HARMLESS, RefineSettings(steps=1))
    for bad in ({"micro_batch": 0}, {"steps": 0}, {"lr": 0.0}, {"init_depth": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RefineSettings(**bad)


# --- in the search -------------------------------------------------------------------------------------------

def _config(**kw):
    from refusal_lab.pipeline.optimize import OptimizeConfig

    return OptimizeConfig(**({"model": "tiny", "dtype": "float32", "sources": ["mixed", "refined"], "n_train": 8,
                              "n_val": 6, "n_score": 4, "trials": 4, "startup_trials": 4, "trials_per_pass": 4,
                              "rows_per_pass": 48, "max_kl": 10.0, "survivors": 2, "max_new_tokens": 4,
                              "refine": {"steps": 2, "batch_size": 4}, "contexts": ["default"],
                              "compliance_check": {"judge": None}} | kw))


def test_search_tries_the_refined_direction_first_stores_it_once_and_exports_it(tmp_path, monkeypatch):
    import optuna
    from safetensors.torch import load_file

    import refusal_lab.search.refine as refine
    from refusal_lab.pipeline.export import trial_ablation
    from refusal_lab.pipeline.optimize import load_study, optimize

    monkeypatch.setenv("REFUSAL_LAB_CACHE", str(tmp_path / "cache"))
    lm, run = tiny_model("qwen2"), tmp_path / "run"
    optimize(lm, _config(), run)
    first = load_study(run).get_trials(states=[optuna.trial.TrialState.COMPLETE])[0]
    assert first.number == 0 and first.params["source"] == "refined"
    assert json.loads((run / "refine.json").read_text())["settings"]["steps"] == 2
    stored = load_file(str(run / "refined.safetensors"))
    direction = stored["direction"]
    ablation = trial_ablation(lm, run, 0)
    assert torch.allclose(ablation.directions, direction.expand(lm.n_layers, -1), atol=1e-6)
    assert all(torch.equal(ablation.weights[c], torch.ones(lm.n_layers)) for c in ("attn", "mlp"))
    cosine = float(direction @ stored["init"] / stored["init"].norm())
    assert 0.5 < cosine < 1.0 - 1e-6  # refined from DiM, not left at it

    def never(*args, **kwargs):
        raise AssertionError("the stored refined direction was recomputed")

    monkeypatch.setattr(refine, "refine_direction", never)
    optimize(lm, _config(trials=8), run)  # resumes with the stored direction
    assert len(load_study(run).get_trials(states=[optuna.trial.TrialState.COMPLETE])) == 8
    monkeypatch.undo()
    monkeypatch.setenv("REFUSAL_LAB_CACHE", str(tmp_path / "cache"))
    optimize(lm, _config(trials=8, refine={"steps": 3, "batch_size": 4}), tmp_path / "other")
    assert not torch.equal(load_file(str(tmp_path / "other" / "refined.safetensors"))["direction"], direction)
