"""The coherence gate on hand-built result rows: a condition that stops producing language is marked "breaks the
model", never starred best in the Δ figure, left out of the findings' best picks, and stated in the report and in
findings.json; controls and the baseline are never gated."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from conftest import described
from test_findings import FLIP, ONES, ZEROS, evidence, perplexity, rates, repetition
from test_report import build_report, synthetic_evidence

from refusal_lab.analysis.coherence import (
    BOUNDS,
    BREAK_COHERENCE_FALL,
    BREAK_PERPLEXITY_RISE,
    BREAK_REPETITION_RISE,
    BROKEN_LABEL,
    bounds_text,
    broken,
    gate,
)
from refusal_lab.analysis.findings import NOT_SUPPORTED, SUPPORTED, THRESHOLDS, assess, findings_json
from refusal_lab.analysis.plots import (
    BEST_LABEL,
    best_bars,
    build_delta_figure,
    build_landing_figure,
    build_rank_k_figure,
)
from refusal_lab.analysis.reader import Reader
from refusal_lab.analysis.report import render

REFUSAL = ("refusal", "substring", "harmful", 24)
LEACE = "leace[all]"
WRITES = "flip[layer,alpha=2,flip_variant=writes]"


def row(name, metric, dataset, difference, low=None, high=None, judge="", delta=None):
    """One result row of ``name`` (described as the planner records it): its paired difference vs baseline."""
    low = difference if low is None else low
    high = difference if high is None else high
    delta = difference if delta is None else delta
    return described(name) | dict(metric=metric, judge=judge, dataset=dataset, max_new_tokens=24, goal="bypass",
                                  difference=difference, difference_ci_low=low, difference_ci_high=high,
                                  delta=delta, delta_ci_low=delta - 0.05, delta_ci_high=delta + 0.05)


def results() -> pd.DataFrame:
    """flip: instruction perplexity ×6,700; leace: +0.43 repeated 3-grams; subspace: coherence −0.5 (llm judge);
    ablate: coherent; the baseline and a control with absurd rises (never gated); rank-k: a rise whose interval
    reaches below the bound (not gated); the refusal rows give flip the highest Δ, then leace, then ablate."""
    rows = [row("baseline", "perplexity", "instructions", 9e9),
            row("ablate[all]~random0", "perplexity", "instructions", 9e9, 9e9, 9e9),
            row(FLIP, "perplexity", "instructions", 6700.0, 6500.0, 6900.0),
            row(FLIP, "perplexity", "wikitext", 0.5, 0.4, 0.6),
            row(LEACE, "repetition", "both", 0.43, 0.35, 0.5, judge="3-gram"),
            row("subspace[all,k=3]", "coherence", "both", -0.5, -0.6, -0.4, judge="llm:judge"),
            row("ablate[all]", "perplexity", "instructions", 0.02, 0.01, 0.03),
            row("ablate[all]", "repetition", "both", 0.01, 0.0, 0.02, judge="3-gram"),
            row("rank-k[layer,k=1,order=iteration]", "perplexity", "instructions", 1.5, 0.8, 2.2)]
    for name, delta in ((FLIP, 1.0), (LEACE, 0.95), ("ablate[all]", 0.8), ("subspace[all,k=3]", 0.9),
                        ("rank-k[layer,k=1,order=iteration]", 0.3), ("ablate[all]~random0", 2.0)):
        rows.append(row(name, "refusal", "harmful", -delta, judge="substring", delta=delta))
    return pd.DataFrame(rows)


# --- the gate ------------------------------------------------------------------------------------------------------

def test_gate_marks_what_stops_producing_language_and_why():
    gone = broken(results())
    assert set(gone) == {FLIP, LEACE, "subspace[all,k=3]"}
    assert gone[FLIP].startswith("perplexity (instructions) ×6.7e+03") and "wikitext" not in gone[FLIP]
    assert "repetition (both)" in gone[LEACE] and "coherence (both)" in gone["subspace[all,k=3]"]
    gates = gate(results())
    assert not gates["ablate[all]"].breaks and gates["ablate[all]"].reason == ""
    assert not gates["rank-k[layer,k=1,order=iteration]"].breaks  # CI low 0.8 ≤ 1: not beyond doubt
    assert "baseline" not in gates and "ablate[all]~random0" not in gates  # never gated


def test_bounds_are_named_and_stated():
    assert (BREAK_PERPLEXITY_RISE, BREAK_REPETITION_RISE, BREAK_COHERENCE_FALL) == (1.0, 0.2, 0.3)
    assert BOUNDS == {"BREAK_PERPLEXITY_RISE": 1.0, "BREAK_REPETITION_RISE": 0.2, "BREAK_COHERENCE_FALL": 0.3}
    text = bounds_text()
    assert "+1" in text and "+0.2" in text and "−0.3" in text
    assert BOUNDS.items() <= THRESHOLDS.items()


def test_a_row_without_an_interval_is_judged_on_its_value_and_missing_columns_gate_nothing():
    table = pd.DataFrame([row(FLIP, "repetition", "both", 0.3, float("nan"), float("nan"), judge="3-gram")])
    assert set(broken(table)) == {FLIP}
    assert broken(pd.DataFrame([described(FLIP)])) == {} and broken(pd.DataFrame()) == {}


# --- the Δ figure -------------------------------------------------------------------------------------------------

def test_best_bars_skips_broken_bars_and_stars_nothing_when_all_break():
    assert list(best_bars([1.0, 0.9, 0.5], [True, False, False])) == [False, True, False]
    assert not best_bars([1.0, 0.9], [True, True]).any()
    assert not best_bars([0.5, 0.5], [False, False]).any()  # a tie everywhere: nothing to be best over
    assert list(best_bars([1.0, 0.2], [True, False])) == [False, True]  # the only coherent bar, below a broken one


def test_delta_figure_marks_broken_conditions_and_stars_the_best_coherent_one():
    fig = build_delta_figure(results(), metrics=[REFUSAL])
    try:
        ax = fig.axes[0]
        labels = [t.get_text() for t in ax.get_yticklabels()]
        marked = {label.split("\n")[0] for label in labels if BROKEN_LABEL in label}
        assert marked == {"flip[layer,alpha=2,input]", LEACE, "subspace[all,k=3]"}
        stars = [line for line in ax.get_lines() if line.get_label() == BEST_LABEL]
        assert len(stars) == 1 and list(stars[0].get_ydata()) == [labels.index("ablate[all]")]
        bold = [t.get_text() for t in ax.get_yticklabels() if t.get_fontweight() == "bold"]
        assert bold == ["ablate[all]"]
        hatched = [labels[i] for i, bar in enumerate(ax.patches) if bar.get_hatch()]
        assert {label.split("\n")[0] for label in hatched} == marked
        legend = {t.get_text() for legend in fig.legends for t in legend.get_texts()}
        assert BROKEN_LABEL in legend and BEST_LABEL in legend
    finally:
        plt.close(fig)


def test_delta_figure_without_a_coherent_condition_stars_nothing():
    only_broken = results()
    only_broken = only_broken[~only_broken["intervention"].isin(["ablate[all]", "rank-k[layer,k=1,order=iteration]"])]
    fig = build_delta_figure(only_broken, metrics=[REFUSAL])
    try:
        assert not [line for line in fig.axes[0].get_lines() if line.get_label() == BEST_LABEL]
    finally:
        plt.close(fig)
    fig = build_delta_figure(results(), metrics=[REFUSAL], breaks=())  # an explicit empty gate: the flip wins
    try:
        labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        stars = [line for line in fig.axes[0].get_lines() if line.get_label() == BEST_LABEL]
        assert list(stars[0].get_ydata()) == [labels.index("flip[layer,alpha=2,input]")]
    finally:
        plt.close(fig)


def test_landing_and_rank_k_figures_mark_broken_conditions():
    points = {side: np.random.default_rng(0).normal(size=(5, 2)) for side in ("harmful", "harmless")}
    fig = build_landing_figure({"baseline": points, FLIP: points, "ablate[all]": points}, "landing", breaks={FLIP})
    try:
        titles = [ax.get_title() for ax in fig.axes]
        assert BROKEN_LABEL in titles[0] and BROKEN_LABEL not in titles[1]
    finally:
        plt.close(fig)
    curve = pd.DataFrame({"k": [1, 2, 3], "order": "iteration", "value": [0.5, 0.3, 0.0], "ci_low": [0.4, 0.2, 0.0],
                          "ci_high": [0.6, 0.4, 0.1], "breaks": [False, False, True]})
    fig = build_rank_k_figure(curve, "refusal")
    try:
        crosses = [line for line in fig.axes[0].get_lines() if line.get_label() == BROKEN_LABEL]
        assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [3.0]
    finally:
        plt.close(fig)


# --- the findings -------------------------------------------------------------------------------------------------

def _flip_evidence(*flips, gated=()):
    """Finding 3's items (baseline refuses, ablation and the flips suppress, the flips' perplexity rises), with
    result rows saying the conditions in ``gated`` have instruction perplexity ×6,700."""
    base = (rates("baseline", ONES), rates("ablate[layer]", ZEROS), perplexity("baseline", 2.0),
            repetition("baseline", 0.1))
    items = [item for name in flips for item in (rates(name, ZEROS), perplexity(name, 2.4), repetition(name, 0.1))]
    rows = pd.DataFrame([{k: v for k, v in row(n, "perplexity", "instructions", 6700.0, 6500.0, 6900.0).items()
                          if k not in ("kind", "scope", "params", "control")} for n in gated],
                        columns=["intervention", "metric", "dataset", "difference", "difference_ci_low",
                                 "difference_ci_high"])
    return evidence(*base, *items, results=rows)


def test_a_broken_flip_is_no_best_pick_and_makes_finding_3_unsupported():
    ev = _flip_evidence(FLIP, gated=[FLIP])
    reader = Reader(ev, "substring", None)
    assert set(reader.broken) == {FLIP} and reader.best(reader.of("flip")) is None
    found = assess(ev)[2]
    assert found.verdict == NOT_SUPPORTED
    assert f"{FLIP} breaks the model" in found.note and "perplexity (instructions)" in found.note
    assert assess(_flip_evidence(FLIP))[2].verdict == SUPPORTED  # the same flip, not gated


def test_a_coherent_flip_still_wins_beside_a_broken_one():
    ev = _flip_evidence(FLIP, WRITES, gated=[WRITES])
    reader = Reader(ev, "substring", None)
    assert reader.best(reader.of("flip"))[0].name == FLIP
    found = assess(ev)[2]
    assert found.verdict == SUPPORTED
    assert f"refusal: {FLIP} − ablate[layer]" in found.numbers and not any(WRITES in k for k in found.numbers)
    assert f"{WRITES} breaks the model" in found.note


def test_a_broken_nullspace_does_not_suppress_refusal_in_finding_2():
    base, ablate = rates("baseline", ONES), rates("ablate[layer]", ZEROS)
    null = [rates("nullspace[layer]", [1, 0] * 20)]
    assert assess(evidence(base, ablate, *null))[1].verdict == SUPPORTED
    gated = pd.DataFrame([{"intervention": "nullspace[layer]", "metric": "perplexity", "dataset": "instructions",
                           "difference": 50.0, "difference_ci_low": 40.0, "difference_ci_high": 60.0}])
    found = assess(evidence(base, ablate, *null, results=gated))[1]
    assert found.verdict == NOT_SUPPORTED and "nullspace[layer] breaks the model" in found.note


def test_findings_json_and_the_report_state_the_bounds(tmp_path):
    data = json.loads(json.dumps(findings_json([], {})))
    assert {k: data["thresholds"][k] for k in BOUNDS} == BOUNDS
    report, evidences, findings = build_report(tmp_path / "run")
    page = report.read_text(encoding="utf-8")
    assert "Coherence gate." in page and f"above +{BREAK_PERPLEXITY_RISE:g}" in page
    assert set(broken(evidences[0].results)) == {WRITES}  # the fixture's model-breaking flip
    assert "<th>coherence gate</th>" in page and f'<td class="worse">{BROKEN_LABEL}</td>' in page
    assert f"<td>{WRITES}</td><td>perplexity (instructions) ×" in page  # the gate's table: the condition, why
    assert f"refusal: {WRITES}" not in json.dumps([f.numbers for f in findings[evidences[0].model]])


def test_the_landing_table_marks_a_broken_condition():
    ev = synthetic_evidence("m")
    ev.landing = pd.concat([ev.landing, ev.landing.iloc[[-1]].assign(intervention=WRITES)], ignore_index=True)
    page = render([ev], {"m": assess(ev)}, {"m": []}, {})
    assert f"<td>{WRITES} ({BROKEN_LABEL})</td>" in page
    assert f"<td>{FLIP} ({BROKEN_LABEL})</td>" not in page


def test_draw_figures_reads_the_gate(tmp_path):
    from refusal_lab.pipeline.study_analysis import draw_figures

    ev = synthetic_evidence("m")
    extra = row("rank-k[layer,k=4,order=iteration]", "repetition", "both", 0.5, 0.45, 0.55, judge="3-gram")
    ev.results = pd.concat([ev.results, pd.DataFrame([extra | {"family": "INLP"}])], ignore_index=True)
    figures = draw_figures(ev, tmp_path)
    captions = [caption for caption, _ in figures]
    assert "break the model" in captions[0] and any("a cross: breaks the model" in c for c in captions)
    assert all(path.exists() for _, path in figures)
