"""Extraction: fit every requested method on the train activations and select each at every configured scope.

One path for every method (DiM included): ``fit`` → candidates saved under ``RUN_DIR/methods/<fit>/`` →
:func:`refusal_lab.selection.select.select` at each scope of ``config.selection.scopes`` → ``chosen-<scope>.*``.
DiM runs
first: its ranking (``RUN_DIR/ranking.json``) orders the ``top50`` scope and the subspace stack. Every stage writes
its marker last, so an interrupted run resumes at the stage in flight; layout in :mod:`refusal_lab.pipeline.artifacts`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from rich.console import Console

from refusal_lab.core.io import read_json, write_csv, write_json
from refusal_lab.methods.registry import METHODS, FitContext, MethodsConfig, PlanEnv, get_method
from refusal_lab.models.activations import collect_activations
from refusal_lab.pipeline.artifacts import (
    chosen_stem,
    load_candidates,
    load_chosen,
    methods_dir,
    save_candidates,
    selection_marker,
)
from refusal_lab.selection.attribution import AttributionPrior
from refusal_lab.selection.select import Baseline, Candidate, Selection, SelectionConfig, candidates_from_table, select

log = Console(stderr=True).log


@dataclass
class Extraction:
    """What extraction selected: ``selections[(method, scope)]`` and the chosen artifacts (None: nothing passed);
    ``fits``: the train-split fit context it built (None when everything was resumed), for later stages to reuse."""

    selections: dict[tuple[str, str], Selection] = field(default_factory=dict)
    chosen: dict[tuple[str, str], object] = field(default_factory=dict)
    ranked: list[tuple[int, int]] = field(default_factory=list)
    fits: FitContext | None = None


def fit_context(lm, splits, config) -> FitContext:
    """Train activations of both sides (disk-cached) as a :class:`FitContext`."""
    harmful = collect_activations(lm, splits.train_harmful.texts, config.batch_size, description="harmful acts")
    harmless = collect_activations(lm, splits.train_harmless.texts, config.batch_size, description="harmless acts")
    return FitContext(lm.name, harmful.acts, harmless.acts, harmful.mean, harmless.mean, splits.data_hash(),
                      config.selection.max_layer_fraction)


def _fit(method, ctx: FitContext, config, root: Path, hidden_size: int) -> dict[tuple, object]:
    fit_root = root / method.fitted_by
    if (fit_root / "fit.json").exists():
        return load_candidates(fit_root, hidden_size)
    log(f"fitting {method.fitted_by} on {ctx.train_harmful.shape[0]} + {ctx.train_harmless.shape[0]} train prompts")
    candidates = get_method(method.fitted_by).fit(ctx, config.methods)
    save_candidates(fit_root, candidates)
    write_json(fit_root / "fit.json", {"candidates": len(candidates), "methods": config.methods.model_dump()})
    return candidates


def _dim_cells(result: Extraction, name: str, selection: SelectionConfig) -> dict[str, tuple[int, int]]:
    """With ``selection.candidates == "dim"``, the ``(layer, position)`` DiM chose at each scope, where a method
    other than DiM may choose (scopes where DiM chose nothing are absent: any cell there); else empty."""
    if selection.candidates == "all" or name == "dim":
        return {}
    return {scope: (c.provenance.layer, c.provenance.position)
            for (method, scope), c in result.chosen.items() if method == "dim" and c is not None}


def _at_cell(candidates: dict[tuple, object], cell: tuple[int, int] | None) -> dict[tuple, object]:
    """The candidates at ``cell`` and every one keyed by k instead (all of them when ``cell`` is None)."""
    if cell is None:
        return candidates
    return {key: c for key, c in candidates.items() if key[0] is None or key[:2] == cell}


def attribution_prior(lm, val_harmful, baseline: Baseline, selection: SelectionConfig) -> AttributionPrior:
    """The fast mode's prior, on the ``prior_prompts`` most strongly refused harmful val prompts."""
    strongest = baseline.harmful_scores.argsort(descending=True)[: selection.prior_prompts].tolist()
    log(f"attribution prior: one forward + backward pass over {len(strongest)} harmful val prompts")
    return AttributionPrior(lm, [val_harmful[i] for i in strongest])


def select_candidates(lm, name: str, candidates: dict[tuple, object], scope: str, val_harmful, val_harmless,
                      selection: SelectionConfig, methods: MethodsConfig, baseline: Baseline | None = None,
                      prior: AttributionPrior | None = None, kl_cache: dict | None = None,
                      ranked_layers: Sequence[int] = (), fits: FitContext | None = None) -> Selection:
    """Select among one method's ``candidates`` ``{(layer, position, k): artifact}`` at ``scope`` on the val
    prompts (see :mod:`refusal_lab.selection.select`); ``baseline``/``prior`` are computed when not given; ``fits``
    gives affine methods their per-layer maps at multi-layer scopes (without it they stay at one layer)."""
    method = get_method(name)
    baseline = baseline or Baseline.compute(lm, val_harmful, val_harmless, selection.batch_size)
    if prior is None and selection.mode == "fast":
        prior = attribution_prior(lm, val_harmful, baseline, selection)
    env = PlanEnv(lm.n_layers, list(ranked_layers), methods, selection.induce_scales, fits)
    pool = _pool(method, scope, candidates, lm.n_layers, selection)
    plans = {c.key: method.plan(candidates[c.key], c.layer, scope, env) for c in pool
             if c.status == "not evaluated"}
    log(f"selecting {name} at scope {scope} among {len(plans)} candidates ({selection.mode})")
    return select(lm, name, plans, pool, val_harmful, val_harmless, selection, baseline, prior, kl_cache)


def _pool(method, scope: str, candidates: dict[tuple, object], n_layers: int, config: SelectionConfig
          ) -> list[Candidate]:
    pool = []
    for (layer, position, k), artifact in sorted(candidates.items(), key=lambda kv: tuple(
            -1 if x is None else x for x in kv[0])):
        c = Candidate(method.name, scope, layer, position, k)
        if method.inlp_derived:
            c.inlp_accuracy = float(artifact.provenance.extra.get("inlp", {}).get("first_accuracy", math.nan))
        if layer is not None and layer >= config.max_layer_fraction * n_layers:
            c.status = f"filtered: layer >= {config.max_layer_fraction}L"
        elif method.inlp_derived and not c.inlp_accuracy >= config.min_inlp_accuracy:
            c.status = f"filtered: INLP accuracy < {config.min_inlp_accuracy}"
        pool.append(c)
    return pool


def _save_selection(run_dir: Path, selection: Selection, candidates: dict, ranked_layers: list[int]) -> object:
    out = methods_dir(run_dir) / selection.method
    write_csv(selection.table(), out / f"selection-{selection.scope}.csv")
    chosen = None
    if selection.chosen is not None:
        c = selection.chosen
        artifact = candidates[c.key]
        scores = {k: getattr(c, k) for k in ("layer", "position", "k", "bypass", "induce", "induce_scale", "kl")}
        provenance = dataclasses.replace(artifact.provenance, extra={
            **artifact.provenance.extra, "ranked_layers": ranked_layers,
            "selection": {"method": selection.method, "scope": selection.scope, **scores}})
        chosen = dataclasses.replace(artifact, provenance=provenance)
        chosen.save(chosen_stem(run_dir, selection.method, selection.scope))
    closest = selection.chosen or selection.closest()
    record = None if closest is None else {k: getattr(closest, k) for k in ("layer", "position", "k", "bypass",
                                                                               "induce", "induce_scale", "kl")}
    write_json(selection_marker(run_dir, selection.method, selection.scope),
               {"chosen": selection.chosen is not None, "closest": record, "timings_s": selection.timings_s})
    return chosen


def _load_selection(run_dir: Path, method: str, scope: str, hidden_size: int) -> tuple[Selection, object] | None:
    marker = selection_marker(run_dir, method, scope)
    if not marker.exists():
        return None
    cands = candidates_from_table(pd.read_csv(methods_dir(run_dir) / method / f"selection-{scope}.csv"))
    chosen = next((c for c in cands if c.status.startswith("selected")), None)
    return (Selection(method, scope, cands, chosen, read_json(marker).get("timings_s", {})),
            load_chosen(run_dir, method, scope, hidden_size))


def extract(lm, splits, config, run_dir: str | Path, methods: Sequence[str] = ("dim",)) -> Extraction:
    """Fit and select ``methods`` (DiM always first) at every scope of ``config.selection.scopes``; resumable."""
    run_dir = Path(run_dir)
    root = methods_dir(run_dir)
    wanted = ["dim", *[m for m in dict.fromkeys(methods) if m != "dim"]]
    for name in wanted:
        get_method(name)
    result = Extraction()
    ctx = None
    baseline = prior = None
    kl_cache: dict = {}
    val_harmful, val_harmless = splits.val_harmful.texts, splits.val_harmless.texts
    ranking_path = run_dir / "ranking.json"
    for name in wanted:
        method = METHODS[name]
        todo = [s for s in config.selection.scopes if not selection_marker(run_dir, name, s).exists()]
        if todo or not (root / method.fitted_by / "fit.json").exists():
            ctx = ctx or fit_context(lm, splits, config)
            if ranking_path.exists():
                ctx.ranked = [tuple(cell) for cell in read_json(ranking_path)["ranked"]]
        at_dim = _dim_cells(result, name, config.selection)
        if ctx:
            ctx.selectable = set(at_dim.values()) or None
        candidates = _fit(method, ctx, config, root, lm.hidden_size) if ctx else {}
        for scope in config.selection.scopes:
            loaded = _load_selection(run_dir, name, scope, lm.hidden_size)
            if loaded is None:
                if baseline is None:
                    log(f"baseline scores on {len(val_harmful)} + {len(val_harmless)} val prompts")
                    baseline = Baseline.compute(lm, val_harmful, val_harmless, config.selection.batch_size)
                if prior is None and config.selection.mode == "fast":
                    prior = attribution_prior(lm, val_harmful, baseline, config.selection)
                ranked_layers = [layer for layer, _ in (ctx.ranked or [])]
                selection = select_candidates(
                    lm, name, _at_cell(candidates, at_dim.get(scope)), scope, val_harmful,
                    val_harmless, config.selection, config.methods, baseline, prior, kl_cache, ranked_layers, fits=ctx)
                chosen = _save_selection(run_dir, selection, candidates, ranked_layers)
            else:
                selection, chosen = loaded
            result.selections[(name, scope)] = selection
            result.chosen[(name, scope)] = chosen
            if name == "dim" and not ranking_path.exists():
                ranked = _dim_ranking(selection)
                write_json(ranking_path, {"ranked": ranked, "scope": scope})
                if ctx is not None:
                    ctx.ranked = [tuple(cell) for cell in ranked]
    if ranking_path.exists():
        result.ranked = [tuple(cell) for cell in read_json(ranking_path)["ranked"]]
    result.fits = ctx
    return result


def _dim_ranking(selection: Selection) -> list[list[int]]:
    """DiM ``(layer, position)`` best first, one per layer (the candidates with any bypass score, ranked)."""
    cells: dict[int, int] = {}
    for c in sorted(selection.candidates, key=Candidate.rank_key):
        if c.layer is not None and not all(math.isnan(v) for v in (c.bypass, c.screen_bypass, c.estimated_bypass)):
            cells.setdefault(c.layer, c.position)
    return [[layer, position] for layer, position in cells.items()]
