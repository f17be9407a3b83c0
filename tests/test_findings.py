"""Findings on hand-built evidence: 0/1 items chosen so each finding's answer is obvious, one case per verdict."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import described

from refusal_lab.analysis.evidence import ModelEvidence
from refusal_lab.analysis.findings import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    TITLES,
    assess,
    findings_json,
    interventions,
)

N = 40
ONES, ZEROS, HALF = [1] * N, [0] * N, [1, 0] * (N // 2)
FLIP = "flip[layer,alpha=2,flip_variant=input]"


def rates(name, values, metric="refusal", dataset="harmful", judge="substring", length=24):
    return [dict(intervention=name, metric=metric, judge=judge, dataset=dataset, max_new_tokens=length,
                 item=f"{dataset}:{i}", value=float(v), tokens=math.nan) for i, v in enumerate(values)]


def perplexity(name, nll_per_token, dataset="wiki", n=N):
    return [dict(intervention=name, metric="perplexity", judge="", dataset=dataset, max_new_tokens=0,
                 item=f"{dataset}:{i}", value=nll_per_token * (10 + i % 3), tokens=float(10 + i % 3))
            for i in range(n)]


def repetition(name, value):
    return [dict(intervention=name, metric="repetition", judge="3-gram", dataset="both", max_new_tokens=24,
                 item=f"both:{i}", value=value + 0.01 * (i % 2), tokens=math.nan) for i in range(N)]


def evidence(*item_lists, results=None, **tables) -> ModelEvidence:
    rows = [row for items in item_lists for row in items]
    names = list(dict.fromkeys(r["intervention"] for r in rows))
    meta = pd.DataFrame([described(n) for n in names], columns=["intervention", "kind", "scope", "params", "control"])
    results = meta if results is None else results.merge(meta, on="intervention", how="outer")
    return ModelEvidence("tiny", n_layers=6, layer=2, position=-1, landing_layer=3, results=results,
                         items=pd.DataFrame(rows), **tables)


def verdict(ev: ModelEvidence, finding: int, **kwargs) -> str:
    found = assess(ev, **kwargs)
    assert [f.id for f in found] == list(range(1, 8))
    return found[finding - 1].verdict


def test_interventions_come_from_the_stored_fields_not_the_names():
    table = pd.DataFrame([
        {"intervention": "baseline", "kind": "none", "scope": "", "params": "{}", "control": False},
        {"intervention": "any label", "kind": "rank-k", "scope": "layer", "control": False,
         "params": json.dumps({"k": 3, "order": "iteration", "center": True})},
        {"intervention": "any label", "kind": "rank-k", "scope": "layer", "control": False,  # another metric's row
         "params": json.dumps({"k": 3, "order": "iteration", "center": True})},
        {"intervention": "its control", "kind": "rank-k", "scope": "layer", "params": "{}", "control": True},
        {"intervention": "flip α=3", "kind": "flip", "scope": "all", "params": json.dumps({"alpha": 3.0}),
         "control": False}])
    rank_k, flip = interventions(table)
    assert (rank_k.name, rank_k.kind, rank_k.scope, rank_k.params["k"], rank_k.centered) == (
        "any label", "rank-k", "layer", 3, True)
    assert not rank_k.linear and not flip.linear and not flip.centered  # centred; α other than FLIP_ALPHA


def test_empty_evidence_is_inconclusive_everywhere():
    found = assess(evidence())
    assert [f.verdict for f in found] == [INCONCLUSIVE] * 7
    assert [f.title for f in found] == [TITLES[i] for i in range(1, 8)]


# --- 1: first INLP direction vs DiM ------------------------------------------------------------------------------

def _actadd(classifier_bypass, classifier_induce, dim_bypass=ZEROS, dim_induce=ONES):
    return (rates("classifier-actadd[layer,scale=-1]", classifier_bypass),
            rates("actadd[layer,scale=-1]", dim_bypass),
            rates("classifier-actadd[layer,scale=1]", classifier_induce, "harmless_refusal", "harmless"),
            rates("actadd[layer,scale=1]", dim_induce, "harmless_refusal", "harmless"))


def test_finding_1():
    close = pd.DataFrame({"layer": [1, 2, 3], "cosine": [0.1, -0.93, 0.2]})  # a sign is a labelling convention
    assert verdict(evidence(*_actadd(ZEROS, ONES), inlp_dim_cosine=close), 1) == SUPPORTED
    far = pd.DataFrame({"layer": [2], "cosine": [0.4]})
    assert verdict(evidence(*_actadd(ZEROS, ONES), inlp_dim_cosine=far), 1) == NOT_SUPPORTED
    assert verdict(evidence(*_actadd(ONES, ONES), inlp_dim_cosine=close), 1) == NOT_SUPPORTED  # bypass fails
    # 3 of 12 items differ: Δ = 0.25 but its interval reaches 0 — neither equal nor clearly apart
    few = [1, 1, 1] + [0] * 9
    ev = evidence(rates("classifier-actadd[layer,scale=-1]", few), rates("actadd[layer,scale=-1]", [0] * 12),
                  inlp_dim_cosine=close)
    assert verdict(ev, 1) == INCONCLUSIVE
    assert verdict(evidence(*_actadd(ZEROS, ONES)), 1) == INCONCLUSIVE  # no cosine table
    assert verdict(evidence(inlp_dim_cosine=close), 1) == INCONCLUSIVE  # no ActAdd items


def test_finding_1_pairs_each_actadd_at_its_own_selected_scale():
    """DiM's selection induced at scale 2, the classifier (never selected) stays at 1: the rows pair by scope and
    sign; a second DiM row of that sign pairs by the exact scale, and two other scales pair with none."""
    close = pd.DataFrame({"layer": [2], "cosine": [0.9]})
    rows = (rates("classifier-actadd[layer,scale=-1]", ZEROS), rates("actadd[layer,scale=-2]", ONES),
            rates("classifier-actadd[layer,scale=1]", ONES, "harmless_refusal", "harmless"),
            rates("actadd[layer,scale=2]", ONES, "harmless_refusal", "harmless"))
    found = assess(evidence(*rows, inlp_dim_cosine=close))[0]
    assert found.verdict == NOT_SUPPORTED  # the bypass differs by 1.0
    assert set(found.numbers) == {"cosine at layer 2", "refusal: classifier-actadd[layer,scale=-1] − actadd[layer,scale=-2]",
                                  "harmless_refusal: classifier-actadd[layer,scale=1] − actadd[layer,scale=2]"}
    exact = assess(evidence(*rows, rates("actadd[layer,scale=-1]", ZEROS), inlp_dim_cosine=close))[0]
    assert "refusal: classifier-actadd[layer,scale=-1] − actadd[layer,scale=-1]" in exact.numbers
    assert exact.verdict == SUPPORTED
    ambiguous = assess(evidence(rates("classifier-actadd[layer,scale=-1]", ZEROS), rates("actadd[layer,scale=-2]", ONES),
                                rates("actadd[layer,scale=-4]", ONES), inlp_dim_cosine=close))[0]
    assert ambiguous.verdict == INCONCLUSIVE and "no classifier-actadd / actadd pair" in ambiguous.note


# --- 2: nullspace vs ablation ------------------------------------------------------------------------------------

def test_finding_2():
    base, ablate = rates("baseline", ONES), rates("ablate[layer]", ZEROS)
    found = assess(evidence(base, ablate, rates("nullspace[layer]", HALF), rates("nullspace[layer,centered]", ZEROS)))
    assert found[1].verdict == SUPPORTED
    assert found[1].numbers["refusal: nullspace[layer] − ablate[layer]"][0] == pytest.approx(0.5)
    assert verdict(evidence(base, ablate, rates("nullspace[layer]", ZEROS)), 2) == NOT_SUPPORTED  # as reliable
    assert verdict(evidence(base, ablate, rates("nullspace[layer]", ONES)), 2) == NOT_SUPPORTED  # no suppression
    assert verdict(evidence(base, ablate), 2) == INCONCLUSIVE  # no nullspace row
    not_specific = pd.DataFrame([{"intervention": "nullspace[layer]", "metric": "refusal", "dataset": "harmful",
                                  "judge": "substring", "max_new_tokens": 24, "specific": False}])
    ev = evidence(base, ablate, rates("nullspace[layer]", HALF), results=not_specific)
    assert verdict(ev, 2) == INCONCLUSIVE  # its random control suppresses as much


def test_judge_and_length_select_the_items():
    items = (rates("baseline", ONES), rates("ablate[layer]", ZEROS), rates("nullspace[layer]", HALF),
             rates("baseline", ONES, length=8), rates("ablate[layer]", ZEROS, length=8),
             rates("nullspace[layer]", ZEROS, length=8), rates("nullspace[layer]", ONES, judge="llm"),
             rates("baseline", ONES, judge="llm"), rates("ablate[layer]", ZEROS, judge="llm"))
    assert verdict(evidence(*items), 2) == SUPPORTED  # the longest length by default
    assert verdict(evidence(*items), 2, tokens=8) == NOT_SUPPORTED
    assert verdict(evidence(*items), 2, judge="llm") == NOT_SUPPORTED


# --- 3: flipping -------------------------------------------------------------------------------------------------

def test_finding_3():
    base = (rates("baseline", ONES), rates("ablate[layer]", ZEROS), perplexity("baseline", 2.0),
            repetition("baseline", 0.1))
    rises = (perplexity(FLIP, 2.4), repetition(FLIP, 0.1))
    flat = (perplexity(FLIP, 2.0), repetition(FLIP, 0.1))
    assert verdict(evidence(*base, rates(FLIP, ZEROS), *rises), 3) == SUPPORTED
    weaker_writes = rates("flip[layer,alpha=2,flip_variant=writes]", ONES)  # the best variant is used
    assert verdict(evidence(*base, rates(FLIP, ZEROS), weaker_writes, *rises), 3) == SUPPORTED
    assert verdict(evidence(*base, rates(FLIP, ONES), *rises), 3) == NOT_SUPPORTED  # not competitive
    assert verdict(evidence(*base, rates(FLIP, ZEROS), *flat), 3) == NOT_SUPPORTED  # no overcorrection
    assert verdict(evidence(*base[:2], rates(FLIP, ZEROS)), 3) == INCONCLUSIVE  # no perplexity / repetition
    assert verdict(evidence(*base), 3) == INCONCLUSIVE  # no flip row
    other_alpha = rates("flip[layer,alpha=1.5,flip_variant=input]", ZEROS)
    assert verdict(evidence(*base, other_alpha), 3) == INCONCLUSIVE


# --- 4: rank-k ---------------------------------------------------------------------------------------------------

def _sweep(refusal_by_k, ppl_by_k=None, with_ppl=True):
    items = [rates("baseline", ONES), rates("nullspace[layer]", ZEROS)]
    if with_ppl:
        items += [perplexity("baseline", 2.0), perplexity("nullspace[layer]", 2.0)]
    for k, values in refusal_by_k.items():
        name = f"rank-k[layer,k={k},order=iteration]"
        items.append(rates(name, values))
        if with_ppl:
            items.append(perplexity(name, (ppl_by_k or {}).get(k, 2.0)))
    return evidence(*items)


def test_finding_4():
    found = assess(_sweep({1: ONES, 2: ZEROS, 3: ZEROS}))[3]
    assert found.verdict == SUPPORTED
    assert found.numbers["smallest k shown (layer, iteration)"] == 2
    assert found.numbers["INLP rank (layer, iteration)"] == 3
    assert verdict(_sweep({1: ONES, 2: ONES, 3: ZEROS}), 4) == NOT_SUPPORTED  # only the full rank suppresses
    assert verdict(_sweep({1: ZEROS, 2: ZEROS, 3: ZEROS}, {1: 3.0, 2: 3.0}), 4) == NOT_SUPPORTED  # perplexity rises
    assert verdict(_sweep({1: ZEROS, 2: ZEROS}, with_ppl=False), 4) == INCONCLUSIVE  # no perplexity
    assert verdict(_sweep({1: ZEROS}), 4) == INCONCLUSIVE  # one k: no sweep
    no_suppression = evidence(rates("baseline", ONES), rates("nullspace[layer]", ONES),
                              *(rates(f"rank-k[layer,k={k},order=iteration]", ONES) for k in (1, 2)))
    assert verdict(no_suppression, 4) == INCONCLUSIVE  # nothing to keep


# --- 5: landing --------------------------------------------------------------------------------------------------

def _landing(null, flip, nearer=0.9):
    rows = [("nullspace[layer]", "nullspace", *null, 0.4), (FLIP, "flip", *flip, nearer),
            ("nullspace[layer,centered]", "nullspace", 0.0, 0.0, 0.0, 0.0)]
    return pd.DataFrame([described(n) | dict(family="INLP", fraction=f, fraction_ci_low=lo, fraction_ci_high=hi,
                                             nearer_harmless=near, silhouette=0.1)
                         for n, k, f, lo, hi, near in rows])


def test_finding_5():
    assert verdict(evidence(landing=_landing((0.5, 0.4, 0.6), (1.1, 0.95, 1.2))), 5) == SUPPORTED
    assert verdict(evidence(landing=_landing((0.5, 0.4, 0.6), (0.6, 0.5, 0.7), nearer=0.7)), 5) == SUPPORTED
    assert verdict(evidence(landing=_landing((0.05, 0.0, 0.1), (1.1, 0.95, 1.2))), 5) == NOT_SUPPORTED
    assert verdict(evidence(landing=_landing((0.5, 0.4, 0.6), (0.5, 0.4, 0.6), nearer=0.2)), 5) == NOT_SUPPORTED
    assert verdict(evidence(landing=_landing((0.5, 0.1, 0.9), (1.1, 0.95, 1.2))), 5) == INCONCLUSIVE  # too wide
    assert verdict(evidence(), 5) == INCONCLUSIVE


# --- 6: low rank -------------------------------------------------------------------------------------------------

def test_finding_6():
    base, ablate = rates("baseline", ONES), rates("ablate[layer]", HALF)
    heat = np.full((6, 6), 0.9)
    found = assess(evidence(base, ablate, rates("subspace[all,k=3]", ZEROS), heatmaps={"dim": heat}))[5]
    assert found.verdict == SUPPORTED
    assert found.numbers["mean DiM cosine, layer 2 vs later layers"] == pytest.approx(0.9)
    assert "persists" in found.note
    assert verdict(evidence(base, ablate, rates("subspace[all,k=5]", ONES)), 6) == NOT_SUPPORTED
    assert verdict(evidence(base, ablate, rates("subspace[all,k=3]", HALF)), 6) == INCONCLUSIVE
    assert verdict(evidence(base, ablate, rates("subspace[all,k=2]", ZEROS)), 6) == INCONCLUSIVE  # k not compared


# --- 7: sensitivity ----------------------------------------------------------------------------------------------

def test_finding_7():
    def table(batched, matched):
        return pd.DataFrame({"layer": [1, 2], "batched_vs_single": [0.5, batched],
                             "matched_vs_unmatched": [0.5, matched]})
    assert verdict(evidence(sensitivity=table(0.999, 0.95)), 7) == SUPPORTED
    assert verdict(evidence(sensitivity=table(0.97, 0.95)), 7) == NOT_SUPPORTED
    assert verdict(evidence(sensitivity=table(0.999, 0.8)), 7) == NOT_SUPPORTED
    assert verdict(evidence(sensitivity=table(0.999, math.nan)), 7) == INCONCLUSIVE
    assert verdict(evidence(), 7) == INCONCLUSIVE


def test_findings_json_is_strict_json():
    ev = evidence(sensitivity=pd.DataFrame({"layer": [2], "batched_vs_single": [0.999],
                                            "matched_vs_unmatched": [0.95]}),
                  landing=_landing((0.5, 0.4, math.nan), (1.1, 0.95, 1.2)))
    found = assess(ev)
    found[0].numbers["nan"] = [math.nan, np.float32(0.5), math.inf]
    data = findings_json([ev], {"tiny": found})
    again = json.loads(json.dumps(data, allow_nan=False))
    assert again == data
    model = data["models"]["tiny"]
    assert model["layer"] == 2 and [f["id"] for f in model["findings"]] == list(range(1, 8))
    assert model["findings"][0]["numbers"]["nan"] == [None, 0.5, None]
    assert model["findings"][6]["verdict"] == SUPPORTED
    assert data["thresholds"]["CLOSE_COSINE"] == 0.8


# --- the measure and the power ------------------------------------------------------------------------------------

def first_token(name, values, dataset="harmful"):
    metric = "first_token_refusal" if dataset == "harmful" else "first_token_harmless_refusal"
    return rates(name, values, metric=metric, dataset=dataset, judge="log-odds > 0", length=0)


def test_first_token_rates_decide_where_measured_and_generation_for_the_flip():
    """Judged responses say the nullspace is as reliable as ablation (not supported); 120 first-token items say it
    is weaker (supported): finding 2 reads the first-token rates once they exist, finding 3 stays on responses."""
    judged = (rates("baseline", ONES), rates("ablate[layer]", ZEROS), rates("nullspace[layer]", ZEROS))
    assert verdict(evidence(*judged), 2) == NOT_SUPPORTED
    n = 120
    fast = (first_token("baseline", [1] * n), first_token("ablate[layer]", [0] * n),
            first_token("nullspace[layer]", [1, 0] * (n // 2)))
    found = assess(evidence(*judged, *fast))
    assert found[1].verdict == SUPPORTED and found[1].n == n and "first-token" in found[1].measure
    assert found[1].numbers["refusal: nullspace[layer] − ablate[layer]"][0] == pytest.approx(0.5)
    flip = assess(evidence(*judged, *fast, rates(FLIP, ZEROS), first_token(FLIP, [1] * n)))[2]
    assert flip.numbers[f"refusal: {FLIP} − baseline"][0] == pytest.approx(-1.0)  # the judged rate, not the first-token
    assert "judged" in flip.measure and flip.n == N


def test_each_finding_states_its_power_and_an_underpowered_one_says_so():
    """Finding 2 at n = 12 with a 3-item difference between nullspace and ablation: its interval straddles 0, so it
    is inconclusive for its size; detectable = 2.8 × the interval's width / 3.92 of its widest difference."""
    few = [1, 1, 1] + [0] * 9
    ev = evidence(rates("baseline", [1] * 12), rates("ablate[layer]", [0] * 12), rates("nullspace[layer]", few))
    found = assess(ev)[1]
    assert found.verdict == INCONCLUSIVE and found.reason == "underpowered: n = 12"
    assert found.label == "inconclusive (underpowered: n = 12)"
    apart = found.numbers["refusal: nullspace[layer] − ablate[layer]"]
    suppress = found.numbers["refusal: nullspace[layer] − baseline"]
    widest = max(apart[2] - apart[1], suppress[2] - suppress[1], 0.0)
    assert found.detectable == pytest.approx(max(2.8 * widest / 3.92, 2.8 * 0.5 / math.sqrt(12)), rel=1e-6)
    assert found.detectable > 0.25  # a 3-in-12 difference is below what 12 items can detect
    missing = assess(evidence(rates("baseline", ONES)))[1]  # no rows to compare: no power claim, no size reason
    assert missing.verdict == INCONCLUSIVE and missing.reason == "" and missing.n is None


def test_finding_3_counts_llm_judged_compliance_not_a_missing_refusal_phrase():
    """The flip never says a refusal phrase (refusal 0, as low as ablation) but the llm judge finds it complies with
    none of the requests the ablation complies with: not competitive, so not supported."""
    llm = "llm:judge compliance"
    items = (rates("baseline", ONES), rates("ablate[layer]", ZEROS), rates(FLIP, ZEROS),
             perplexity("baseline", 1.0), perplexity(FLIP, 1.5))
    assert verdict(evidence(*items), 3) == SUPPORTED  # refusal-based: competitive, and perplexity rises
    judged = (rates("ablate[layer]", ONES, metric="unsafe", judge=llm), rates(FLIP, ZEROS, metric="unsafe", judge=llm),
              rates("baseline", ZEROS, metric="unsafe", judge=llm))
    found = assess(evidence(*items, *judged))[2]
    assert found.verdict == NOT_SUPPORTED
    assert found.numbers[f"llm compliance: ablate[layer] − {FLIP}"][0] == pytest.approx(1.0)
    assert verdict(evidence(*items, *(rates(n, ONES, metric="unsafe", judge=llm)
                                      for n in ("ablate[layer]", FLIP, "baseline"))), 3) == SUPPORTED
