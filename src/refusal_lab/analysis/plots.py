"""Figures of a study: cross-layer cosine heatmaps, Δ-vs-baseline bars, landing scatters, rank-k curves, layer lines.

Each ``build_*_figure`` returns a matplotlib :class:`~matplotlib.figure.Figure` (the caller closes it); each
``*_figure`` builds the same figure, saves it as a PNG (dpi 120, tight bounding box) at ``path``, closes it and
returns the path. A condition that breaks the model (:mod:`refusal_lab.analysis.coherence`) is marked in every
figure that shows conditions (grey hatched bar and a label in the Δ figure, a grey panel in the landing figure, a
cross on the rank-k curve) and is never starred best.
Inputs are :class:`refusal_lab.analysis.evidence.ModelEvidence` tables (see there for the columns).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from refusal_lab.analysis.coherence import BROKEN_LABEL, broken  # noqa: E402
from refusal_lab.analysis.evidence import FAMILIES, FAMILY  # noqa: E402

DPI = 120
DELTA_LABEL = "Δ (higher = better for the intervention's goal)"
FAMILY_COLOURS = {"DiM": "#1f77b4", "INLP": "#ff7f0e", "classifier": "#2ca02c", "LEACE": "#9467bd",
                  "subspace": "#8c564b"}
OTHER_COLOUR = "#7f7f7f"
BEST_LABEL = "best (highest Δ among conditions that do not break the model)"
BROKEN_COLOUR, BROKEN_HATCH = "#d9d9d9", "//"
HARMFUL, HARMLESS = "#d62728", "#1f77b4"
HARMFUL_LIGHT, HARMLESS_LIGHT = "#f5b7b1", "#aed6f1"
MetricKey = tuple[str, str, str, int]  # metric, judge, dataset, max_new_tokens


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def short_name(intervention: str, width: int = 26) -> str:
    """An intervention name for a tick label: ``flip_variant=`` dropped, wrapped after commas at ``width`` chars."""
    name, lines = intervention.replace("flip_variant=", ""), [""]
    for piece in name.replace(",", ",\x00").split("\x00"):
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines)


def _layer_ticks(n: int, most: int = 16) -> np.ndarray:
    return np.arange(0, n, max(1, math.ceil(n / most)))


# --- cross-layer cosine heatmap -------------------------------------------------------------------------------------

def build_heatmap_figure(matrix: np.ndarray, title: str, marked_layer: int | None = None) -> Figure:
    """``matrix [L, L]`` of cosines (−1 … 1, diverging colours), layer ticks, ``marked_layer`` dashed."""
    matrix = np.asarray(matrix, dtype=np.float64)
    n = matrix.shape[0]
    side = min(4.0 + 0.12 * n, 9.0)
    fig, ax = plt.subplots(figsize=(side + 1.3, side))
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1.0, vmax=1.0, origin="lower", interpolation="nearest")
    ticks = _layer_ticks(n)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    ax.set_title(title)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("cosine")
    if marked_layer is not None:
        style = {"color": "black", "linestyle": "--", "linewidth": 0.9}
        ax.axhline(marked_layer, **style)
        ax.axvline(marked_layer, **style, label=f"chosen layer ({marked_layer})")
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.1), frameon=False)
    return fig


def heatmap_figure(matrix: np.ndarray, title: str, path: str | Path, marked_layer: int | None = None) -> Path:
    """:func:`build_heatmap_figure` saved at ``path``."""
    return _save(build_heatmap_figure(matrix, title, marked_layer), path)


# --- Δ vs baseline ----------------------------------------------------------------------------------------------------

def _same(column: pd.Series, value) -> pd.Series:
    """``column == value`` with missing values equal to each other (a judge-less metric has judge "" or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value):
        return column.isna() | (column.astype(str) == "")
    return column == value


def panel_title(key: MetricKey) -> str:
    """``metric · judge · dataset · N new tokens`` (empty parts and 0 tokens left out)."""
    metric, judge, dataset, tokens = key
    parts = [str(p) for p in (metric, judge, dataset) if isinstance(p, str) and p]
    if tokens is not None and not pd.isna(tokens) and int(tokens) > 0:
        parts.append(f"{int(tokens)} new tokens")
    return " · ".join(parts)


def _interventions(results: pd.DataFrame) -> pd.DataFrame:
    """Non-control, non-baseline rows with a ``family`` column (from ``kind`` when absent)."""
    rows = results[~results["control"].fillna(False).astype(bool) & (results["intervention"] != "baseline")].copy()
    if "family" not in rows:
        rows["family"] = rows["kind"].map(FAMILY)
    rows["family"] = rows["family"].fillna("other")
    rank = {family: i for i, family in enumerate(FAMILIES)}
    first = {name: i for i, name in enumerate(dict.fromkeys(rows["intervention"]))}
    rows["_order"] = [(rank.get(f, len(FAMILIES)), first[n]) for f, n in zip(rows["family"], rows["intervention"])]
    return rows


def best_bars(delta: Sequence[float], breaks: Sequence[bool]) -> np.ndarray:
    """Which bars of a panel get the star: the highest finite Δ among the bars that do not break the model (no star
    when every bar breaks the model, or when every finite bar has that same Δ: nothing to be best over)."""
    delta, breaks = np.asarray(delta, dtype=np.float64), np.asarray(breaks, dtype=bool)
    finite = np.isfinite(delta)
    coherent = finite & ~breaks
    if not coherent.any() or (delta[finite] == delta[coherent].max()).all():
        return np.zeros(len(delta), bool)
    return coherent & (delta == delta[coherent].max())


def _delta_panel(ax, rows: pd.DataFrame, key: MetricKey, gone: Collection[str]) -> None:
    rows = rows.drop_duplicates("intervention", keep="last").sort_values("_order")
    y = np.arange(len(rows))
    delta = rows["delta"].to_numpy(dtype=np.float64)
    low = np.nan_to_num(delta - rows["delta_ci_low"].to_numpy(dtype=np.float64)).clip(min=0)
    high = np.nan_to_num(rows["delta_ci_high"].to_numpy(dtype=np.float64) - delta).clip(min=0)
    colours = [FAMILY_COLOURS.get(f, OTHER_COLOUR) for f in rows["family"]]
    bars = ax.barh(y, np.nan_to_num(delta), xerr=[low, high], color=colours, ecolor="0.25", capsize=2, height=0.7)
    breaks = rows["intervention"].isin(list(gone)).to_numpy()
    best = best_bars(delta, breaks)
    span = max(float(np.nanmax(np.abs(np.r_[delta - low, delta + high, 0.0]))), 1e-9)
    for i in np.flatnonzero(best):
        bars[i].set_edgecolor("black")
        bars[i].set_linewidth(2.0)
    for i in np.flatnonzero(breaks):
        bars[i].set_facecolor(BROKEN_COLOUR)
        bars[i].set_edgecolor(colours[i])
        bars[i].set_hatch(BROKEN_HATCH)
    if best.any():
        ax.plot(delta[best] + high[best] + 0.06 * span, y[best], linestyle="none", marker="*", markersize=12,
                color="gold", markeredgecolor="black", label=BEST_LABEL)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlim(-1.15 * span, 1.2 * span)
    ax.set_yticks(y, [short_name(n) + (f"\n({BROKEN_LABEL})" if b else "") for n, b in
                      zip(rows["intervention"], breaks)], fontsize=8)
    for tick, is_best, b in zip(ax.get_yticklabels(), best, breaks):
        tick.set_fontweight("bold" if is_best else "normal")
        tick.set_color("0.45" if b else "black")
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    ax.set_title(panel_title(key), fontsize=10)
    ax.set_xlabel(DELTA_LABEL, fontsize=9)
    ax.grid(axis="x", alpha=0.3)


def build_delta_figure(results: pd.DataFrame, metrics: Sequence[MetricKey] | None = None,
                       title: str = "Δ vs baseline", breaks: Collection[str] | None = None) -> Figure:
    """One horizontal-bar panel per ``(metric, judge, dataset, max_new_tokens)`` in ``metrics`` (default: every one
    in the non-control rows, in table order) that has rows; bars = Δ with its 95 % interval per intervention,
    coloured and grouped by family (:data:`FAMILIES` order), the highest Δ of a condition that does not break the
    model starred and outlined (:func:`best_bars`); no baseline. ``breaks``: the conditions that break the model
    (default: :func:`refusal_lab.analysis.coherence.broken` of ``results``), grey, hatched and labelled."""
    gone = set(broken(results) if breaks is None else breaks)
    rows = _interventions(results)
    keys = list(metrics) if metrics is not None else list(dict.fromkeys(
        zip(rows["metric"], rows["judge"], rows["dataset"], rows["max_new_tokens"])))
    panels = []
    for key in keys:
        mask = np.ones(len(rows), bool)
        for column, value in zip(("metric", "judge", "dataset", "max_new_tokens"), key):
            mask &= _same(rows[column], value).to_numpy()
        if mask.any():
            panels.append((key, rows[mask]))
    if not panels:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no intervention results for the requested metrics", ha="center", va="center")
        ax.set_title(title)
        return fig
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    tallest = max(panel["intervention"].nunique() for _, panel in panels)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.0 * ncols, nrows * (0.32 * tallest + 1.6)), squeeze=False)
    for ax, (key, panel) in zip(axes.flat, panels):
        _delta_panel(ax, panel, key, gone)
    for ax in axes.flat[len(panels):]:
        fig.delaxes(ax)
    present = [f for f in (*FAMILIES, "other") if f in set(rows["family"])]
    handles = [Patch(color=FAMILY_COLOURS.get(f, OTHER_COLOUR), label=f) for f in present]
    handles.append(Line2D([], [], linestyle="none", marker="*", markersize=12, color="gold", markeredgecolor="black",
                          label=BEST_LABEL))
    if gone & set(rows["intervention"]):
        handles.append(Patch(facecolor=BROKEN_COLOUR, edgecolor="0.3", hatch=BROKEN_HATCH, label=BROKEN_LABEL))
    fig.suptitle(title, fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles), frameon=False)
    return fig


def delta_figure(results: pd.DataFrame, path: str | Path, metrics: Sequence[MetricKey] | None = None,
                 title: str = "Δ vs baseline", breaks: Collection[str] | None = None) -> Path:
    """:func:`build_delta_figure` saved at ``path``."""
    return _save(build_delta_figure(results, metrics, title, breaks), path)


# --- landing on the fixed frame ---------------------------------------------------------------------------------------

def build_landing_figure(frames: Mapping[str, Mapping[str, np.ndarray]], title: str,
                         axis_labels: tuple[str, str] = ("DiM direction (h·r̂)", "first orthogonal PC (h·p)"),
                         breaks: Collection[str] = ()) -> Figure:
    """One panel per intervention of ``frames`` (name → ``{"harmful": [n, 2], "harmless": [m, 2]}``): the clean
    clusters (``frames["baseline"]``) in light colours under the transformed points, centroids as crosses / stars;
    the panel of a condition in ``breaks`` (it breaks the model) grey, its title saying so."""
    clean = frames.get("baseline")
    names = [name for name in frames if name != "baseline"] or list(frames)
    ncols = min(4, len(names))
    nrows = math.ceil(len(names) / ncols)
    panel = (3.6, 3.4) if ncols > 1 else (5.2, 4.6)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), sharex=True, sharey=True,
                             squeeze=False)
    for ax, name in zip(axes.flat, names):
        if clean is not None:
            for side, colour in (("harmful", HARMFUL_LIGHT), ("harmless", HARMLESS_LIGHT)):
                points = np.asarray(clean[side])
                ax.scatter(points[:, 0], points[:, 1], s=8, color=colour, alpha=0.7, linewidths=0)
                ax.scatter(*points.mean(0), s=90, marker="X", color=colour, edgecolors="0.3", linewidths=0.8)
        for side, colour in (("harmful", HARMFUL), ("harmless", HARMLESS)):
            points = np.asarray(frames[name][side])
            ax.scatter(points[:, 0], points[:, 1], s=9, color=colour, alpha=0.6, linewidths=0)
            ax.scatter(*points.mean(0), s=180, marker="*", color=colour, edgecolors="black", linewidths=0.9)
        ax.set_title(short_name(name, 34) + (f"\n({BROKEN_LABEL})" if name in breaks else ""), fontsize=9,
                     color="0.45" if name in breaks else "black")
        if name in breaks:
            ax.set_facecolor("#eeeeee")
        ax.set_xlabel(axis_labels[0], fontsize=8)
        ax.set_ylabel(axis_labels[1], fontsize=8)
        ax.grid(alpha=0.25)
        ax.label_outer()
    for index, ax in enumerate(axes.flat[len(names):], start=len(names)):
        ax.set_visible(False)
        above = axes.flat[index - ncols]  # now the lowest panel of its column: give it the x axis back
        above.xaxis.set_tick_params(labelbottom=True)
        above.set_xlabel(axis_labels[0], fontsize=8)
    handles = [Line2D([], [], linestyle="none", marker="o", color=c, label=text) for c, text in (
        (HARMFUL_LIGHT, "harmful, clean"), (HARMLESS_LIGHT, "harmless, clean"),
        (HARMFUL, "harmful, transformed"), (HARMLESS, "harmless, transformed"))]
    handles += [Line2D([], [], linestyle="none", marker="X", color="0.7", markeredgecolor="0.3", markersize=9,
                       label="clean centroid"),
                Line2D([], [], linestyle="none", marker="*", color="0.5", markeredgecolor="black", markersize=12,
                       label="transformed centroid")]
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3 if ncols > 1 else 2,
               frameon=False, fontsize=9)
    return fig


def landing_figure(frames: Mapping[str, Mapping[str, np.ndarray]], path: str | Path, title: str,
                   axis_labels: tuple[str, str] = ("DiM direction (h·r̂)", "first orthogonal PC (h·p)"),
                   breaks: Collection[str] = ()) -> Path:
    """:func:`build_landing_figure` saved at ``path``."""
    return _save(build_landing_figure(frames, title, axis_labels, breaks), path)


# --- rank-k curves and per-layer lines --------------------------------------------------------------------------------

def build_rank_k_figure(rows: pd.DataFrame, ylabel: str, references: Mapping[str, float] | None = None,
                        title: str = "Removing the top-k INLP directions") -> Figure:
    """``value`` vs ``k`` per ``order`` (columns k, order, value, ci_low, ci_high; optionally ``breaks``: the point's
    condition breaks the model, crossed out) with 95 % error bars, slightly dodged so orders do not hide each other;
    ``references`` (label → value) as dashed horizontal lines."""
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    orders = list(dict.fromkeys(rows["order"]))
    for i, order in enumerate(orders):
        line = rows[rows["order"] == order].sort_values("k")
        k, value = line["k"].to_numpy(dtype=np.float64), line["value"].to_numpy(dtype=np.float64)
        err = [np.nan_to_num(value - line["ci_low"].to_numpy(dtype=np.float64)).clip(min=0),
               np.nan_to_num(line["ci_high"].to_numpy(dtype=np.float64) - value).clip(min=0)]
        x = k + 0.08 * (i - (len(orders) - 1) / 2)
        ax.errorbar(x, value, yerr=err, marker="o", markersize=4, capsize=3, label=f"order: {order}")
        gone = line["breaks"].fillna(False).astype(bool).to_numpy() if "breaks" in line else np.zeros(len(line), bool)
        if gone.any():
            ax.plot(x[gone], value[gone], linestyle="none", marker="x", markersize=10, color="black",
                    markeredgewidth=2, label=BROKEN_LABEL if BROKEN_LABEL not in ax.get_legend_handles_labels()[1]
                    else "_nolegend_")
    for (label, value), style in zip((references or {}).items(), ("--", ":", "-.", (0, (5, 1)))):
        ax.axhline(value, color="0.35", linestyle=style, linewidth=1.2, label=f"{label} ({value:.2f})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("k (directions removed: leading INLP rows, or stacked layers)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def rank_k_figure(rows: pd.DataFrame, path: str | Path, ylabel: str, references: Mapping[str, float] | None = None,
                  title: str = "Removing the top-k INLP directions") -> Path:
    """:func:`build_rank_k_figure` saved at ``path``."""
    return _save(build_rank_k_figure(rows, ylabel, references, title), path)


def build_layer_lines_figure(frame: pd.DataFrame, x: str, columns: Sequence[str], title: str, ylabel: str,
                             marked_layer: int | None = None) -> Figure:
    """One line per column of ``frame`` against ``frame[x]`` (e.g. the geometry or sensitivity table per layer);
    ``marked_layer`` as a dotted vertical line. Put columns of one scale together (cosines, or norms)."""
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    ordered = frame.sort_values(x)
    for column in columns:
        ax.plot(ordered[x], ordered[column], marker="o", markersize=3, label=column.replace("_", " "))
    if marked_layer is not None:
        ax.axvline(marked_layer, color="black", linestyle=":", linewidth=1.0, label=f"chosen layer ({marked_layer})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def layer_lines_figure(frame: pd.DataFrame, x: str, columns: Sequence[str], path: str | Path, title: str,
                       ylabel: str, marked_layer: int | None = None) -> Path:
    """:func:`build_layer_lines_figure` saved at ``path``."""
    return _save(build_layer_lines_figure(frame, x, columns, title, ylabel, marked_layer), path)


__all__ = ["BEST_LABEL", "DELTA_LABEL", "FAMILY_COLOURS", "best_bars", "build_delta_figure", "build_heatmap_figure",
           "build_landing_figure", "build_layer_lines_figure", "build_rank_k_figure", "delta_figure", "heatmap_figure",
           "landing_figure", "layer_lines_figure", "panel_title", "rank_k_figure", "short_name"]
