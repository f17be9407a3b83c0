"""Figures: each writes a plausible PNG from small synthetic inputs; the Δ figure has one panel per metric present,
bars in family order, the highest Δ starred, and readable intervention labels."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from refusal_lab.analysis.plots import (
    BEST_LABEL,
    DELTA_LABEL,
    build_delta_figure,
    delta_figure,
    heatmap_figure,
    landing_figure,
    layer_lines_figure,
    panel_title,
    rank_k_figure,
    short_name,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REFUSAL = ("refusal", "substring", "harmful", 128)
KL = ("kl", "first-token", "harmless", 0)
PERPLEXITY = ("perplexity", "", "lambada", 0)


def assert_png(path, min_side: int = 200) -> None:
    assert path.exists() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5_000
    height, width = imread(path).shape[:2]
    assert min_side <= height <= 5_000 and min_side <= width <= 5_000


def results_table() -> pd.DataFrame:
    """Two metrics with rows; interventions listed out of family order; a baseline and a control that must not show."""
    interventions = [("leace[layer]", "leace", "LEACE"), ("ablate[all]", "ablate", "DiM"),
                     ("flip[layer,alpha=2,flip_variant=input]", "flip", "INLP"),
                     ("actadd[layer,scale=-1]", "actadd", "DiM")]
    deltas = {REFUSAL: [0.2, 0.9, 0.5, 0.4], KL: [-0.01, -0.03, -0.2, -0.02]}
    rows = []
    for key, values in deltas.items():
        metric, judge, dataset, tokens = key
        common = dict(metric=metric, judge=judge, dataset=dataset, max_new_tokens=tokens, goal="bypass")
        rows.append(dict(intervention="baseline", kind="none", family="baseline", control=False, delta=5.0,
                         delta_ci_low=5.0, delta_ci_high=5.0, **common))
        rows.append(dict(intervention="ablate[all]~random0", kind="ablate", family="DiM", control=True, delta=3.0,
                         delta_ci_low=2.0, delta_ci_high=4.0, **common))
        for (name, kind, family), value in zip(interventions, values):
            rows.append(dict(intervention=name, kind=kind, family=family, control=False, delta=value,
                             delta_ci_low=value - 0.05, delta_ci_high=value + 0.05, **common))
    return pd.DataFrame(rows)


def test_short_name_drops_the_variant_key_and_wraps_after_commas():
    assert short_name("flip[layer,alpha=2,flip_variant=input]") == "flip[layer,alpha=2,input]"
    wrapped = short_name("rank-k[layer,k=3,order=iteration]", width=20)
    assert wrapped == "rank-k[layer,k=3,\norder=iteration]"
    assert short_name("ablate[all]") == "ablate[all]"


def test_panel_title_names_metric_judge_dataset_and_tokens():
    assert panel_title(REFUSAL) == "refusal · substring · harmful · 128 new tokens"
    assert panel_title(PERPLEXITY) == "perplexity · lambada"
    assert panel_title(("perplexity", float("nan"), "lambada", 0)) == "perplexity · lambada"


def test_delta_figure_has_one_panel_per_metric_present_in_family_order_with_the_best_starred():
    results = results_table()
    fig = build_delta_figure(results, metrics=[KL, PERPLEXITY, REFUSAL])  # perplexity has no rows: no panel
    try:
        assert len(fig.axes) == 2
        kl_ax, refusal_ax = fig.axes
        assert kl_ax.get_title() == panel_title(KL) and refusal_ax.get_title() == panel_title(REFUSAL)
        assert refusal_ax.get_xlabel() == DELTA_LABEL
        labels = [t.get_text() for t in refusal_ax.get_yticklabels()]
        # DiM (in table order), then INLP, then LEACE; no baseline, no control
        assert labels == ["ablate[all]", "actadd[layer,scale=-1]", "flip[layer,alpha=2,input]", "leace[layer]"]
        bold = [t.get_text() for t in refusal_ax.get_yticklabels() if t.get_fontweight() == "bold"]
        assert bold == ["ablate[all]"]
        stars = [line for line in refusal_ax.get_lines() if line.get_label() == BEST_LABEL]
        assert len(stars) == 1 and list(stars[0].get_ydata()) == [labels.index("ablate[all]")]
        widths = [bar.get_width() for bar in refusal_ax.patches]
        assert widths == pytest.approx([0.9, 0.4, 0.5, 0.2])
        kl_best = [t.get_text() for t in kl_ax.get_yticklabels() if t.get_fontweight() == "bold"]
        assert kl_best == ["leace[layer]"]  # −0.01 is the highest Δ
        legend_texts = {t.get_text() for legend in fig.legends for t in legend.get_texts()}
        assert {"DiM", "INLP", "LEACE", BEST_LABEL} <= legend_texts and "classifier" not in legend_texts
    finally:
        plt.close(fig)


def test_delta_figure_defaults_to_every_metric_and_survives_no_rows(tmp_path):
    results = results_table()
    fig = build_delta_figure(results)
    try:
        assert [ax.get_title() for ax in fig.axes] == [panel_title(REFUSAL), panel_title(KL)]
    finally:
        plt.close(fig)
    empty = build_delta_figure(results, metrics=[PERPLEXITY])
    try:
        assert len(empty.axes) == 1 and not empty.axes[0].axison
    finally:
        plt.close(empty)
    path = delta_figure(results, tmp_path / "delta.png")
    assert_png(path)
    assert plt.get_fignums() == []  # saved figures are closed


def test_delta_figure_without_a_family_column_takes_it_from_kind():
    results = results_table().drop(columns="family")
    fig = build_delta_figure(results, metrics=[REFUSAL])
    try:
        colours = {bar.get_facecolor() for bar in fig.axes[0].patches}
        assert len(colours) == 3  # DiM, INLP, LEACE
    finally:
        plt.close(fig)


def test_heatmap_figure_writes_a_png(tmp_path):
    directions = np.random.default_rng(0).normal(size=(12, 8)).cumsum(0)
    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    path = heatmap_figure(unit @ unit.T, "DiM cosines across layers", tmp_path / "sub" / "heatmap.png",
                          marked_layer=6)
    assert path == tmp_path / "sub" / "heatmap.png"
    assert_png(path)


def test_landing_figure_writes_a_png(tmp_path):
    rng = np.random.default_rng(1)
    clean = {"harmful": rng.normal(size=(20, 2)) + [4, 0], "harmless": rng.normal(size=(20, 2))}
    frames = {"baseline": clean,
              "ablate[all]": {"harmful": clean["harmful"] - [4, 0], "harmless": clean["harmless"]},
              "flip[layer,alpha=2,flip_variant=input]": {"harmful": clean["harmful"] - [8, 0],
                                                         "harmless": clean["harmless"]}}
    assert_png(landing_figure(frames, tmp_path / "landing.png", "Landing at layer 3"))


def test_rank_k_figure_writes_a_png(tmp_path):
    rows = pd.DataFrame([dict(k=k, order=order, value=0.9 / (k + 1), ci_low=0.8 / (k + 1), ci_high=1.0 / (k + 1))
                         for order in ("iteration", "svd") for k in range(5)])
    path = rank_k_figure(rows, tmp_path / "rank_k.png", "refusal rate",
                         references={"baseline": 0.95, "full nullspace": 0.1})
    assert_png(path)


def test_layer_lines_figure_writes_a_png(tmp_path):
    frame = pd.DataFrame({"layer": range(6), "batched_vs_single": np.linspace(0.99, 1.0, 6),
                          "matched_vs_unmatched": np.linspace(0.6, 0.9, 6)})
    path = layer_lines_figure(frame, "layer", ["batched_vs_single", "matched_vs_unmatched"], tmp_path / "s.png",
                              "DiM sensitivity per layer", "cosine", marked_layer=3)
    assert_png(path)
