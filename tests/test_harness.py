"""The built-in multiple-choice scorer checked against EleutherAI's lm-evaluation-harness (issue 22; what
benchmarks/check_mmlu_harness.py checks on the bundled model, here on a tiny random model, in-process and offline).

lm-eval builds the MMLU prompts itself, from the raw dev/test rows and its own mmlu template; ARC's OLMES requests
go in verbatim. On the same questions the two agree on the prompt, the continuations, every loglikelihood (float
rounding), each question's choice and the accuracy — plain, under a hook and on a weight-edited model. The one
documented difference, truncation of a context longer than the model's maximum length, is tested exactly.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from conftest import tiny_model
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.evaluation.condition import Condition
from refusal_lab.evaluation.harness import harness_logprobs, harness_scores
from refusal_lab.evaluation.multiple_choice import choice_logprobs, correct, load_arc, load_mmlu
from refusal_lab.evaluation.store import ResultsStore
from refusal_lab.evaluation.suite import Suite
from refusal_lab.interventions.base import Addition, Projection
from refusal_lab.interventions.hooks import Intervention
from refusal_lab.interventions.weights import orthogonalize_weights

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm-eval is an optional extra: pip install 'refusal-lab[lm-eval]'")
SUBJECTS = ("marketing", "high_school_geography")


@pytest.fixture(scope="module")
def questions():
    return [q for s in SUBJECTS for q in load_mmlu(full=True, subjects=[s])[:4]] + load_arc(4, seed=0)


def test_without_lm_eval_the_scorer_says_what_to_install(questions, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    with pytest.raises(RefusalLabError, match=r"pip install 'refusal-lab\[lm-eval\]', or use the built-in scorer"):
        harness_logprobs(tiny_model("qwen2"), questions[:1])


def _long_context_model():
    """A tiny qwen2 whose configured maximum length (4096) holds the 5-shot prompts (~2,000 characters, one token
    each), so lm-eval does not truncate them (see the truncation test), with its weights (but the norms') scaled ×8
    so that its choices vary between questions (the plain random model picks one letter everywhere)."""
    lm = tiny_model("qwen2")
    lm.model.config.max_position_embeddings = 4096
    with torch.no_grad():
        for name, param in lm.model.named_parameters():
            if "norm" not in name:
                param.mul_(8)
    return lm


@needs_lm_eval
def test_lm_eval_builds_the_same_prompts_and_scores_them_alike(questions, one_thread):
    lm = _long_context_model()
    theirs = harness_scores(lm, questions, batch_size=4)
    ours = choice_logprobs(lm, questions)
    assert theirs.prompts == [q.prompt for q in questions]  # MMLU's built by lm-eval from the raw rows
    assert theirs.continuations == [list(q.continuations) for q in questions]
    assert (ours - theirs.logprobs).abs().max() < 1e-4
    assert torch.equal(theirs.acc, correct(ours, questions))  # lm-eval's acc, question by question
    assert theirs.acc.float().mean() == correct(ours, questions).float().mean()
    assert len(set(ours.argmax(-1).tolist())) > 1  # the choices differ between questions: the check is not vacuous


@needs_lm_eval
def test_lm_eval_runs_under_the_projects_hooks_and_on_an_edited_model(questions, one_thread):
    lm = _long_context_model()
    chosen = questions[:2] + questions[-2:]
    push = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(5)) * 4
    hooked = [Intervention(Addition(push, 1.0), layers=(1,), sites=("resid_pre",))]
    plain = harness_logprobs(lm, chosen, batch_size=4)
    under_hooks = harness_logprobs(lm, chosen, hooked, batch_size=4)
    assert (under_hooks - plain).abs().max() > 1e-3  # the hook acted inside lm-eval's forwards
    assert (under_hooks - choice_logprobs(lm, chosen, hooked)).abs().max() < 1e-4
    basis, _ = torch.linalg.qr(torch.randn(lm.hidden_size, 1, generator=torch.Generator().manual_seed(6)))
    ablation = [Intervention(Projection(basis.T.contiguous()), layers=tuple(range(lm.n_layers)))]
    reference = choice_logprobs(lm, chosen, ablation)
    orthogonalize_weights(lm, Projection(basis.T.contiguous()))  # the exported form of the same ablation
    assert (harness_logprobs(lm, chosen, batch_size=4) - reference).abs().max() < 1e-4


def _window_loglikelihood(lm, context: str, continuation: str, max_length: int) -> float:
    """By hand: Σ log p(continuation tokens) from one plain forward over the last ``max_length + 1`` tokens of
    context + continuation, less the final one (lm-eval's left truncation)."""
    whole = lm.tokenizer(context + continuation)["input_ids"]
    n_cont = len(whole) - len(lm.tokenizer(context)["input_ids"])
    window = whole[-(max_length + 1):]
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([window[:-1]])).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)[-n_cont:]
    return float(logprobs.gather(-1, torch.tensor(window[-n_cont:])[:, None]).sum())


@needs_lm_eval
def test_the_documented_difference_lm_eval_truncates_long_contexts_from_the_left(questions, one_thread):
    """With a maximum length of 256 (the tiny config's), lm-eval scores the last 257 tokens of context +
    continuation (the context cut from the left, the last token only predicted); the built-in scorer never
    truncates, so on these ~1,600-token prompts it gives other numbers."""
    lm = tiny_model("qwen2", seed=2)
    assert lm.model.config.max_position_embeddings == 256
    chosen = [questions[0], questions[-1]]
    theirs = harness_logprobs(lm, chosen, batch_size=2)
    by_hand = torch.tensor([[_window_loglikelihood(lm, q.prompt, c, 256) for c in q.continuations] for q in chosen])
    assert (theirs - by_hand).abs().max() < 1e-4
    assert (theirs - choice_logprobs(lm, chosen)).abs().max() > 1e-3  # untruncated: other numbers


@needs_lm_eval
def test_the_suite_scores_mmlu_and_arc_with_either_scorer(questions, tmp_path, one_thread):
    lm = _long_context_model()
    values = {}
    for scorer in ("builtin", "lm-eval"):
        suite = Suite(lm, ResultsStore(tmp_path / scorer), ["a"], ["b"], metrics=("mmlu", "arc"), batch_size=4,
                      questions={"mmlu": questions[:8], "arc": questions[8:]}, capability_scorer=scorer)
        rows, items = suite.run([Condition("baseline")])
        suite.store.close()
        values[scorer] = dict(zip(items["item"], items["value"]))
        assert {r["judge"] for r in rows} == {"5-shot" if scorer == "builtin" else "5-shot lm-eval"}
    ours = choice_logprobs(lm, questions)
    assert values["builtin"] == {q.id: float(hit) for q, hit in zip(questions, correct(ours, questions).tolist())}
    assert values["lm-eval"] == values["builtin"]


@needs_lm_eval
def test_lm_eval_on_a_device_mapped_model_equals_the_built_in_scorer_on_one_device(questions, tmp_path, one_thread):
    from refusal_lab.models.load import load_model

    saved = _long_context_model()
    saved.model.save_pretrained(tmp_path / "model")
    saved.tokenizer.save_pretrained(tmp_path / "model")
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    plain = load_model(str(tmp_path / "model"), dtype="float32")  # the saved tokenizer is the reference's too
    mapped = load_model(str(tmp_path / "model"), dtype="float32", device_map=device_map)
    chosen = questions[:2] + questions[-1:]
    assert (harness_logprobs(mapped, chosen, batch_size=4) - choice_logprobs(plain, chosen)).abs().max() < 1e-4
