import math

import pytest
import torch

from conftest import tiny_model
from refusal_lab.activations import collect_activations
from refusal_lab.batched import PerCandidate, batched_scores
from refusal_lab.directions.dim import dim_candidates
from refusal_lab.interventions import Projection
from refusal_lab.scoring import kl_divergence, last_token_logprobs, refusal_scores
from refusal_lab.selection import DIM_COLUMNS, SelectionConfig, ablation, select_direction

HARMFUL = ["do a bad thing now", "another bad request", "make trouble please", "cause harm today"]
HARMLESS = ["bake a cake", "write a poem", "plan a picnic", "explain rainbows"]


def test_refusal_score_is_log_odds():
    logprobs = torch.log(torch.tensor([[0.2, 0.3, 0.5], [0.05, 0.05, 0.9]]))
    scores = refusal_scores(logprobs, [0, 1])
    torch.testing.assert_close(scores, torch.tensor([0.0, math.log(0.1 / 0.9)]))
    assert kl_divergence(logprobs, logprobs).abs().max() < 1e-7


def test_batched_candidate_ablation_equals_one_at_a_time():
    lm = tiny_model("qwen2")
    units = torch.nn.functional.normalize(torch.randn(3, 64), dim=-1)
    ablations = [[ablation(u, lm.n_layers)] for u in units]
    batched, _ = batched_scores(lm, HARMFUL, ablations, rows_per_pass=8)  # 2 candidates per pass
    for i, u in enumerate(units):
        single = refusal_scores(last_token_logprobs(lm, HARMFUL, [ablation(u, lm.n_layers)]), lm.refusal_token_ids)
        torch.testing.assert_close(batched[i], single, atol=1e-4, rtol=1e-4)


def test_per_candidate_stacks_equal_projections_and_loops_otherwise():
    """Equal-rank projections of every candidate run as one stacked projection; any other mix per block."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3 * 2, 5, 16, generator=g)  # 3 candidates × 2 rows, 5 positions

    def basis(k):
        return torch.linalg.qr(torch.randn(16, k, generator=g)).Q.T

    projections = [Projection(basis(2), alpha) for alpha in (2.0, 2.0, 2.0)]
    stacked = PerCandidate(3, list(enumerate(projections)))
    assert stacked.stacked
    expected = torch.cat([p(h[2 * c : 2 * c + 2]) for c, p in enumerate(projections)])
    torch.testing.assert_close(stacked(h), expected)
    mixed = [(0, Projection(basis(1))), (2, Projection(basis(3)))]  # candidate 1 untouched, ranks differ
    looped = PerCandidate(3, mixed)
    assert not looped.stacked
    out = looped(h)
    torch.testing.assert_close(out[2:4], h[2:4])
    torch.testing.assert_close(out[0:2], mixed[0][1](h[0:2]))
    torch.testing.assert_close(out[4:6], mixed[1][1](h[4:6]))


def test_fast_selection_with_every_finalist_matches_exhaustive():
    lm = tiny_model("llama", n_layers=4)
    harmful = collect_activations(lm, HARMFUL, use_cache=False).mean
    harmless = collect_activations(lm, HARMLESS, use_cache=False).mean
    candidates = dim_candidates(harmful, harmless)
    loose = dict(kl_threshold=10.0, induce_threshold=-100.0)
    exhaustive = select_direction(lm, candidates, HARMFUL, HARMLESS, SelectionConfig(mode="exhaustive", **loose))
    fast = select_direction(lm, candidates, HARMFUL, HARMLESS,
                            SelectionConfig(mode="fast", finalists=100, screen_prompts=4, **loose))
    assert exhaustive.chosen is not None
    assert (fast.chosen.layer, fast.chosen.position) == (exhaustive.chosen.layer, exhaustive.chosen.position)
    # layer bound: 0.8 * 4 = 3.2 → layers 0..3 allowed; the table holds every candidate
    assert len(exhaustive.candidates) == 4 * lm.n_post_instruction
    assert all(c.layer < 3.2 for c in exhaustive.candidates if c.status in ("selected", "passed"))
    assert tuple(exhaustive.table().columns) == DIM_COLUMNS


def test_no_passing_candidate_is_reported_not_picked():
    lm = tiny_model("llama", n_layers=2)
    harmful = collect_activations(lm, HARMFUL, use_cache=False).mean
    harmless = collect_activations(lm, HARMLESS, use_cache=False).mean
    result = select_direction(lm, dim_candidates(harmful, harmless), HARMFUL, HARMLESS,
                              SelectionConfig(kl_threshold=-1.0, finalists=2))
    assert result.chosen is None
    assert any(c.status.startswith("filtered: KL") or c.status.startswith("filtered: induce")
               for c in result.candidates)


def test_attribution_matrix_predicts_a_small_partial_ablation():
    """−r̂ᵀ M r̂ is the first-order change of Σ refusal scores when r̂ is ablated from every residual write; a
    partial ablation h − ε(h·r̂)r̂ of every write (placement 'writes', as the writes flip) changes it by ε times
    that."""
    from refusal_lab.interventions import Intervention, Projection
    from refusal_lab.selection import ablation_attribution

    lm = tiny_model("qwen2")
    matrix = ablation_attribution(lm, HARMFUL, batch_size=3)
    r = torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(3)), dim=0)
    predicted = float(-(r.double() @ matrix @ r.double()))
    eps = 1e-2
    partial = Intervention(Projection(r[None], alpha=eps), layers=tuple(range(lm.n_layers)), placement="writes")
    base = refusal_scores(last_token_logprobs(lm, HARMFUL), lm.refusal_token_ids).double().sum()
    moved = refusal_scores(last_token_logprobs(lm, HARMFUL, [partial]), lm.refusal_token_ids).double().sum()
    assert abs(predicted) > 1e-4
    assert abs((moved - base) / eps - predicted) < 0.05 * abs(predicted) + 1e-4


def test_kl_screen_rejects_far_over_the_bar_from_a_few_prompts_only():
    lm = tiny_model("llama", n_layers=4)
    candidates = dim_candidates(collect_activations(lm, HARMFUL, use_cache=False).mean,
                                collect_activations(lm, HARMLESS, use_cache=False).mean)
    strict = dict(kl_threshold=1e-9, induce_threshold=-100.0, finalists=2, screen_keep=4)
    screened = select_direction(lm, candidates, HARMFUL, HARMLESS, SelectionConfig(kl_screen_prompts=2, **strict))
    walked = [c for c in screened.candidates if c.status.startswith("filtered: KL")]
    assert screened.chosen is None and walked
    assert all("screened on 2 prompts" in c.status and math.isnan(c.induce) for c in walked)
    full = select_direction(lm, candidates, HARMFUL, HARMLESS, SelectionConfig(kl_screen_prompts=0, **strict))
    walked = [c for c in full.candidates if c.status.startswith("filtered: KL")]
    assert walked and all("screened" not in c.status and c.kl > 0 for c in walked)
    assert set(full.extra["timings_s"]) >= {"baselines", "attribution estimate", "filters (induce, KL)"}


def test_fast_selection_stops_after_max_checked_candidates():
    lm = tiny_model("llama", n_layers=4)
    candidates = dim_candidates(collect_activations(lm, HARMFUL, use_cache=False).mean,
                                collect_activations(lm, HARMLESS, use_cache=False).mean)
    config = SelectionConfig(induce_threshold=1e9, finalists=2, screen_keep=8, max_checked=3, kl_screen_prompts=0)
    result = select_direction(lm, candidates, HARMFUL, HARMLESS, config)
    checked = [c for c in result.candidates if not math.isnan(c.induce)]
    assert result.chosen is None and len(checked) == 3
    assert all(c.status.startswith("filtered: induce") for c in checked)


def test_kl_screen_prompts_are_reused_in_the_full_kl():
    lm = tiny_model("llama", n_layers=4)
    candidates = dim_candidates(collect_activations(lm, HARMFUL, use_cache=False).mean,
                                collect_activations(lm, HARMLESS, use_cache=False).mean)
    loose = dict(kl_threshold=10.0, induce_threshold=-100.0, finalists=2, screen_keep=4)
    screened = select_direction(lm, candidates, HARMFUL, HARMLESS, SelectionConfig(kl_screen_prompts=3, **loose))
    plain = select_direction(lm, candidates, HARMFUL, HARMLESS, SelectionConfig(kl_screen_prompts=0, **loose))
    assert (screened.chosen.layer, screened.chosen.position) == (plain.chosen.layer, plain.chosen.position)
    assert screened.chosen.kl == pytest.approx(plain.chosen.kl, rel=1e-4, abs=1e-7)
