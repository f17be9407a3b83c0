import math

import pytest
import torch
from conftest import tiny_model

from refusal_lab.interventions import Intervention, Projection
from refusal_lab.interventions.batched import PerCandidate
from refusal_lab.interventions.scoring import kl_divergence, last_token_logprobs, refusal_scores
from refusal_lab.methods.registry import METHODS, FitContext, MethodsConfig
from refusal_lab.models.activations import collect_activations
from refusal_lab.pipeline.extraction import select_candidates
from refusal_lab.selection.attribution import AttributionPrior
from refusal_lab.selection.select import COLUMNS, SelectionConfig

HARMFUL = ["do a bad thing now", "another bad request", "make trouble please", "cause harm today"]
HARMLESS = ["bake a cake", "write a poem", "plan a picnic", "explain rainbows"]


pytestmark = pytest.mark.usefixtures("one_thread")


def ablation(unit, n_layers):
    return Intervention(Projection(unit[None, :]), layers=tuple(range(n_layers)))


def dim_candidates(lm):
    harmful, harmless = (collect_activations(lm, p, use_cache=False) for p in (HARMFUL, HARMLESS))
    ctx = FitContext("tiny", harmful.acts, harmless.acts, harmful.mean, harmless.mean)
    return METHODS["dim"].fit(ctx, MethodsConfig())


def select_dim(lm, candidates, scope="all", **config):
    return select_candidates(lm, "dim", candidates, scope, HARMFUL, HARMLESS, SelectionConfig(**config),
                             MethodsConfig())


def test_refusal_score_is_log_odds():
    logprobs = torch.log(torch.tensor([[0.2, 0.3, 0.5], [0.05, 0.05, 0.9]]))
    scores = refusal_scores(logprobs, [0, 1])
    torch.testing.assert_close(scores, torch.tensor([0.0, math.log(0.1 / 0.9)]))
    assert kl_divergence(logprobs, logprobs).abs().max() < 1e-7


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


@pytest.mark.parametrize("scope", ["layer", "all"])
def test_fast_selection_with_every_finalist_matches_exhaustive(scope):
    lm = tiny_model("llama", n_layers=4)
    candidates = dim_candidates(lm)
    loose = dict(kl_threshold=10.0, induce_threshold=-100.0)
    exhaustive = select_dim(lm, candidates, scope, mode="exhaustive", **loose)
    fast = select_dim(lm, candidates, scope, mode="fast", finalists=100, screen_prompts=4, **loose)
    assert exhaustive.chosen is not None
    assert fast.chosen.key == exhaustive.chosen.key
    assert exhaustive.chosen.bypass == min(c.bypass for c in exhaustive.candidates)
    # every non-zero candidate is in the table (layer 0's template tokens have identical means: none there)
    assert len(exhaustive.candidates) == len(candidates) == 3 * lm.n_post_instruction
    assert tuple(exhaustive.table().columns) == COLUMNS
    assert set(exhaustive.table()["scope"]) == {scope}


def test_no_passing_candidate_is_reported_not_picked():
    lm = tiny_model("llama", n_layers=2)
    result = select_dim(lm, dim_candidates(lm), kl_threshold=-1.0, finalists=2)
    assert result.chosen is None
    assert any(c.status.startswith("filtered: KL") or c.status.startswith("filtered: induce")
               for c in result.candidates)
    assert result.closest() is not None and not math.isnan(result.closest().bypass)


def test_induce_is_relaxed_to_the_first_scale_that_passes_and_says_so():
    """A bar between a candidate's scale-1 and scale-8 induce scores (ActAdd ``h + s·v`` at resid_pre of its layer,
    computed by hand here) is cleared only at the larger scale, which the chosen row records."""
    from refusal_lab.core.artifacts import Direction, Provenance
    from refusal_lab.interventions.base import Addition

    lm = tiny_model("llama", n_layers=4)
    # a vector along the refusal token's unembedding row, added at the last layer, raises its log-odds with scale
    row = lm.model.get_output_embeddings().weight[lm.refusal_token_ids[0]].detach()
    key = (3, -1, None)
    candidates = {key: Direction(row / row.norm() * 0.5, Provenance("tiny", "dim", 64, 3, -1))}

    def induce(scale):
        add = Intervention(Addition(candidates[key].vector, scale), layers=(3,), sites=("resid_pre",))
        return float(refusal_scores(last_token_logprobs(lm, HARMLESS, [add]), lm.refusal_token_ids).mean())

    one, eight = induce(1.0), induce(8.0)
    assert eight > one + 0.1
    bar = (one + eight) / 2
    loose = dict(mode="exhaustive", kl_threshold=10.0, induce_threshold=bar)
    relaxed = select_dim(lm, candidates, induce_scales=[1.0, 8.0], **loose)
    assert relaxed.chosen is not None and relaxed.chosen.induce_scale == 8.0
    assert relaxed.chosen.induce == pytest.approx(eight, rel=1e-4)
    assert "induce at scale 8" in relaxed.chosen.status
    assert select_dim(lm, candidates, induce_scales=[1.0], **loose).chosen is None


@pytest.mark.parametrize("layers,sites", [((1,), ("resid_pre", "attn_out", "mlp_out")), ((1,), ("resid_pre",)),
                                          ((0, 1, 2), ("resid_pre", "attn_out", "mlp_out"))])
def test_attribution_prior_predicts_a_small_projection_at_any_scope(layers, sites):
    """The prior is the first-order change of Σ refusal scores: compare with a finite difference of a tiny partial
    projection h − ε (h V^T) V placed at exactly those layers and sites (rank 2)."""
    lm = tiny_model("qwen2")
    prior = AttributionPrior(lm, HARMFUL, batch_size=3)
    basis = torch.linalg.qr(torch.randn(64, 2, generator=torch.Generator().manual_seed(3))).Q.T
    eps = 1e-2
    partial = Intervention(Projection(basis, alpha=eps), layers=layers, sites=sites, placement="writes")
    predicted_eps = prior.estimate([partial]) / eps
    # the full projection's estimate is the same points at α = 1 (later resid_pre skipped: already projected)
    full = prior.estimate([Intervention(Projection(basis, alpha=1.0), layers=layers, sites=sites)])
    assert full == pytest.approx(predicted_eps, rel=1e-5)
    base = refusal_scores(last_token_logprobs(lm, HARMFUL), lm.refusal_token_ids).double().sum()
    moved = refusal_scores(last_token_logprobs(lm, HARMFUL, [partial]), lm.refusal_token_ids).double().sum()
    assert abs(predicted_eps) > 1e-4
    assert abs(float(moved - base) / eps - predicted_eps) < 0.05 * abs(predicted_eps) + 1e-4


def test_attribution_prior_of_a_full_ablation_counts_each_write_once():
    """Projected at every layer and site, resid_pre after layer 0 is already in the complement: the estimate is
    M_{0,resid_pre} + Σ_l (M_{l,attn} + M_{l,mlp}) (the embedding and every write), computed by hand here."""
    lm = tiny_model("qwen2")
    prior = AttributionPrior(lm, HARMFUL, batch_size=4)
    r = torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(5)), dim=0)
    m = prior.matrices[(0, "resid_pre")] + sum(prior.matrices[(layer, site)] for layer in range(lm.n_layers)
                                               for site in ("attn_out", "mlp_out"))
    assert prior.estimate([ablation(r, lm.n_layers)]) == pytest.approx(float(-(r @ m @ r)), rel=1e-5)
    from refusal_lab.interventions.base import Addition

    assert prior.estimate([Intervention(Addition(r), layers=(1,), sites=("resid_pre",))]) is None


def test_kl_screen_rejects_far_over_the_bar_from_a_few_prompts_only():
    lm = tiny_model("llama", n_layers=4)
    candidates = dim_candidates(lm)
    strict = dict(kl_threshold=1e-9, induce_threshold=-100.0, finalists=2, screen_keep=4)
    screened = select_dim(lm, candidates, kl_screen_prompts=2, **strict)
    walked = [c for c in screened.candidates if c.status.startswith("filtered: KL")]
    assert screened.chosen is None and walked
    assert all("screened on 2 prompts" in c.status and math.isnan(c.induce) for c in walked)
    full = select_dim(lm, candidates, kl_screen_prompts=0, **strict)
    walked = [c for c in full.candidates if c.status.startswith("filtered: KL")]
    assert walked and all("screened" not in c.status and c.kl > 0 for c in walked)
    assert set(full.timings_s) >= {"attribution estimate", "filters (induce, KL)"}


def test_fast_selection_stops_after_max_checked_candidates():
    lm = tiny_model("llama", n_layers=4)
    result = select_dim(lm, dim_candidates(lm), induce_threshold=1e9, finalists=2, screen_keep=8, max_checked=3,
                        kl_screen_prompts=0)
    checked = [c for c in result.candidates if not math.isnan(c.induce)]
    assert result.chosen is None and len(checked) == 3
    assert all(c.status.startswith("filtered: induce") for c in checked)


def test_kl_screen_prompts_are_reused_in_the_full_kl():
    lm = tiny_model("llama", n_layers=4)
    candidates = dim_candidates(lm)
    loose = dict(kl_threshold=10.0, induce_threshold=-100.0, finalists=2, screen_keep=4)
    screened = select_dim(lm, candidates, kl_screen_prompts=3, **loose)
    plain = select_dim(lm, candidates, kl_screen_prompts=0, **loose)
    assert screened.chosen.key == plain.chosen.key
    assert screened.chosen.kl == pytest.approx(plain.chosen.kl, rel=1e-4, abs=1e-7)


def test_selection_config_rejects_typos_and_orders_top50_last():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="mode"):
        SelectionConfig(mode="fsat")
    with pytest.raises(ValidationError, match="extra"):
        SelectionConfig(finalist=3)
    with pytest.raises(ValidationError, match="top50"):
        SelectionConfig(scopes=["top50"])
    assert SelectionConfig(scopes=["top50", "layer"]).scopes == ["layer", "top50"]


def _candidate(layer, bypass, kl=math.nan, status="filtered"):
    from refusal_lab.selection.select import Candidate

    return Candidate("dim", "all", layer, -1, bypass=bypass, kl=kl, status=status)


def test_closest_prefers_candidates_that_reached_the_kl_filter():
    """A candidate rejected by the KL screen on a few prompts (no full KL) is not "closest" while one whose KL was
    measured on every prompt exists, whatever its bypass; without any such candidate, the best bypass scored."""
    from refusal_lab.selection.select import Selection

    screened = _candidate(19, bypass=-5.0)  # best bypass, KL only screened
    measured = [_candidate(14, bypass=-2.4, kl=0.19), _candidate(13, bypass=-2.0, kl=0.12)]
    unscored = _candidate(3, bypass=math.nan)
    assert Selection("dim", "all", [screened, *measured, unscored], None).closest() is measured[0]
    assert Selection("dim", "all", [screened, unscored], None).closest() is screened
    assert Selection("dim", "all", [unscored], None).closest() is None


def test_methods_are_selected_at_dims_closest_cell_when_dim_chose_nothing():
    """With ``candidates = "dim"``, a DiM selection that chose nothing still gives the other methods its closest
    candidate's (layer, position), not every cell; a chosen candidate wins over the closest."""
    from refusal_lab.pipeline.extraction import Extraction, _dim_cells
    from refusal_lab.selection.select import Selection

    nothing = Selection("dim", "all", [_candidate(19, -5.0), _candidate(14, -2.4, kl=0.19)], None)
    picked = _candidate(7, -1.0, kl=0.05, status="selected")
    chose = Selection("dim", "layer", [_candidate(19, -5.0, kl=0.5), picked], picked)
    result = Extraction(selections={("dim", "all"): nothing, ("dim", "layer"): chose})
    config = SelectionConfig(candidates="dim")
    assert _dim_cells(result, "inlp", config) == {"all": (14, -1), "layer": (7, -1)}
    assert _dim_cells(result, "dim", config) == {}
    assert _dim_cells(result, "inlp", SelectionConfig(candidates="all")) == {}
