"""The equivalences the pipeline relies on, on every supported architecture, on the device and dtype of the run.

``REFUSAL_LAB_TEST_DEVICE`` (default ``cpu``) and ``REFUSAL_LAB_TEST_DTYPE`` (default ``bfloat16`` on CUDA,
``float32`` elsewhere) pick them; ``benchmarks/gpu_check.sh`` runs this module on CUDA in bf16, CI on the CPU in
float32 (so the checks cannot rot). Each check compares two routes to the same numbers:

1. directional ablation by hooks = by weight orthogonalization (and an abliteration's hooks = its weight edit);
2. activations extracted in one left-padded batch = one prompt at a time;
3. the batched scoring of several candidates in one pass (selection's ablations, the search's trials) = each
   scored alone.

Tolerances. float32: the CPU figures these tests always had (1e-4 on logits/scores, 1e-5 on KL). bf16 (8 significand
bits, unit roundoff ``u = 2⁻⁸ ≈ 3.9e-3``): the two routes round at different places (a weight edit rounds the edited
matrix to bf16, a hook rounds its float32 projection of the activation; a padded batch reduces in another order), so
each bf16 value may differ by a few ``u`` of its magnitude per layer. The bound is ``atol = rtol = 8u = 3.1e-2`` on
values of order one, and, as the check that matters, the route difference must be under half of the effect being
measured (the intervention's change of the logits, or the spread of the scores across candidates): the rounding must
not be mistaken for a result. Measured on the CPU in bf16 (``REFUSAL_LAB_TEST_DTYPE=bfloat16``) the differences stay
well inside both bounds (docs/scale-out.md).
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import ARCHITECTURES, tiny_model

from refusal_lab.interventions import Intervention, Projection, apply_interventions, orthogonalize_weights
from refusal_lab.interventions.batched import batched_scores
from refusal_lab.interventions.scoring import kl_divergence, last_token_logprobs, refusal_scores
from refusal_lab.models.activations import collect_activations
from refusal_lab.search.edit import Abliteration

DEVICE = torch.device(os.environ.get("REFUSAL_LAB_TEST_DEVICE", "cpu"))
DTYPE = getattr(torch, os.environ.get("REFUSAL_LAB_TEST_DTYPE", "bfloat16" if DEVICE.type == "cuda" else "float32"))
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 8 * 2.0**-8}[DTYPE]
KL_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 8 * 2.0**-8}[DTYPE]
EFFECT_FRACTION = 0.5  # a route difference must be under this fraction of the effect measured
BAKEABLE = tuple(a for a in ARCHITECTURES if a not in ("gemma2", "gemma3_text"))  # post-sublayer norms refuse
HARMFUL = ["do a bad thing now", "another bad request", "make trouble please", "cause harm today"]
PROMPTS = ["a short one", "a somewhat longer prompt here", "mid length", "x"]

if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.exit(f"REFUSAL_LAB_TEST_DEVICE={DEVICE} but torch {torch.__version__} sees no CUDA device", returncode=4)

pytestmark = pytest.mark.usefixtures("one_thread")


def model(model_type: str):
    return tiny_model(model_type, dtype=DTYPE, device=DEVICE)


def orthonormal(k, d=64, seed=1):
    return torch.linalg.qr(torch.randn(d, k, generator=torch.Generator().manual_seed(seed)))[0].T


def close(actual, expected, reference, tolerance=TOLERANCE):
    """``actual`` = ``expected`` within the dtype's tolerance and within half of ``|expected − reference|``
    (the effect), both as float32 on the host."""
    actual, expected, reference = (t.float().cpu() for t in (actual, expected, reference))
    torch.testing.assert_close(actual, expected, atol=tolerance, rtol=tolerance)
    effect = (expected - reference).abs().max()
    assert (actual - expected).abs().max() < EFFECT_FRACTION * effect, (actual - expected).abs().max() / effect


def logits(lm, prompts=PROMPTS):
    with torch.no_grad():
        return lm.model(**lm.tokenize(prompts)).logits[:, -1]


@pytest.mark.parametrize("model_type", BAKEABLE)
@pytest.mark.parametrize("rank", [1, 4])
def test_weight_orthogonalization_equals_hooks(model_type, rank):
    lm = model(model_type)
    projection = Projection(orthonormal(rank))
    with apply_interventions(lm, [Intervention(projection, layers=tuple(range(lm.n_layers)))]):
        hooked = logits(lm)
    baseline = logits(lm)
    lm_head_before = lm.model.get_output_embeddings().weight.detach().clone()
    orthogonalize_weights(lm, projection)
    close(logits(lm), hooked, baseline)
    # untied: the unembedding is unchanged, only writers were edited
    torch.testing.assert_close(lm.model.get_output_embeddings().weight, lm_head_before)


def abliteration(lm, seed=0, weight=0.8):
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(lm.n_layers, lm.hidden_size, generator=g), dim=-1)
    weights = {"attn": torch.tensor([weight, 0.0, 1.3]), "mlp": torch.tensor([0.5, 1.0, 0.0])}
    return Abliteration(directions, weights, {"model": lm.name})


@pytest.mark.parametrize("model_type", BAKEABLE)
def test_abliteration_weight_edit_equals_its_hooks(model_type):
    lm = model(model_type)
    edit = abliteration(lm)
    with apply_interventions(lm, edit.interventions()):
        hooked = logits(lm)
    baseline = logits(lm)
    edit.apply_to_weights(lm)
    close(logits(lm), hooked, baseline)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_batched_activations_equal_one_by_one(model_type):
    lm = model(model_type)
    batched = collect_activations(lm, PROMPTS, batch_size=4, use_cache=False)
    singles = torch.cat([collect_activations(lm, [p], batch_size=1, use_cache=False).acts for p in PROMPTS])
    assert batched.acts.shape == (4, 3, lm.n_post_instruction, 64) and batched.acts.dtype == DTYPE
    # the effect: how far the prompts' activations lie from their mean (what a difference of means measures)
    close(batched.acts, singles, singles.float().mean(0, keepdim=True).expand_as(singles))
    torch.testing.assert_close(batched.mean, singles.double().mean(0), atol=TOLERANCE, rtol=TOLERANCE)


def scores_alone(lm, prompts, candidates, base):
    """Refusal scores and KL ``[C, n]`` of each candidate scored on its own, unbatched."""
    alone = [last_token_logprobs(lm, prompts, interventions) for interventions in candidates]
    return (torch.stack([refusal_scores(one, lm.refusal_token_ids) for one in alone]),
            torch.stack([kl_divergence(base, one) for one in alone]))


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_batched_candidate_ablations_equal_one_at_a_time(model_type):
    """Selection: one directional ablation per candidate direction, two candidates per pass."""
    lm = model(model_type)
    units = torch.nn.functional.normalize(torch.randn(3, 64, generator=torch.Generator().manual_seed(2)), dim=-1)
    candidates = [[Intervention(Projection(u[None, :]), layers=tuple(range(lm.n_layers)))] for u in units]
    base = last_token_logprobs(lm, HARMFUL)
    batched, kl = batched_scores(lm, HARMFUL, candidates, base, rows_per_pass=8)
    alone, kl_alone = scores_alone(lm, HARMFUL, candidates, base)
    close(batched, alone, alone.mean(0, keepdim=True).expand_as(alone))
    torch.testing.assert_close(kl, kl_alone, atol=KL_TOLERANCE, rtol=KL_TOLERANCE)


@pytest.mark.parametrize("model_type", BAKEABLE)
def test_search_trials_scored_together_equal_each_alone(model_type):
    """The search (optimize.score_pass): trials of different directions and weights share one batched pass."""
    lm = model(model_type)
    edits = [abliteration(lm, seed=s, weight=w) for s, w in ((0, 0.8), (1, 1.5), (2, 0.0))]
    candidates = [e.interventions(dense=True, lm=lm) for e in edits]
    base = last_token_logprobs(lm, HARMFUL)
    batched, kl = batched_scores(lm, HARMFUL, candidates, base, rows_per_pass=12)
    alone, kl_alone = scores_alone(lm, HARMFUL, [e.interventions() for e in edits], base)
    close(batched, alone, alone.mean(0, keepdim=True).expand_as(alone))
    torch.testing.assert_close(kl, kl_alone, atol=KL_TOLERANCE, rtol=KL_TOLERANCE)
