"""Extraction: fit every requested method on the train activations and select each at every configured scope.

One path for every method (DiM included): ``fit`` → candidates saved under ``RUN_DIR/methods/<fit>/`` →
:func:`refusal_lab.selection.select.select` at each scope of ``config.selection.scopes`` → ``chosen-<scope>.*``.
DiM runs
first: its ranking (``RUN_DIR/ranking.json``) orders the ``top50`` scope and the subspace stack. Each step is a stage
of the run directory (:class:`~refusal_lab.pipeline.rundir.RunDirectory`): ``activations`` (the train activations,
timing only: they are cached by content), ``fit-<fit>``, ``select-<method>-<scope>`` and ``ranking``. A finished
stage is read back, never redone; an interrupted one (no marker) is cleared and redone, whatever files it left.
Layout in :mod:`refusal_lab.pipeline.artifacts`.
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
    RANKING_STAGE,
    chosen_stem,
    clear_fit,
    clear_selection,
    fit_stage,
    load_candidates,
    load_chosen,
    methods_dir,
    save_candidates,
    selection_stage,
    selection_table,
)
from refusal_lab.pipeline.rundir import RunDirectory
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


def extraction_stages(config, methods: Sequence[str] = ("dim",)) -> list[str]:
    """The stages :func:`extract` runs for ``methods`` (DiM always) at ``config.selection.scopes``: when all have
    finished, extraction only reads its results back."""
    wanted = ["dim", *[m for m in dict.fromkeys(methods) if m != "dim"]]
    fits = dict.fromkeys(fit_stage(get_method(name).fitted_by) for name in wanted)
    return [*fits, *(selection_stage(name, scope) for name in wanted for scope in config.selection.scopes),
            RANKING_STAGE]


def _context(lm, splits, config, directory: RunDirectory) -> FitContext:
    """:func:`fit_context` as stage ``activations`` (its marker: the timing and prompt counts); the DiM ranking is
    attached once its stage finished."""
    with directory.stage("activations") as info:
        ctx = fit_context(lm, splits, config)
        info |= {"harmful": int(ctx.train_harmful.shape[0]), "harmless": int(ctx.train_harmless.shape[0])}
    if directory.done(RANKING_STAGE):
        ctx.ranked = _ranking(directory)
    return ctx


def _ranking(directory: RunDirectory) -> list[tuple[int, int]]:
    return [tuple(cell) for cell in read_json(directory.path / "ranking.json")["ranked"]]  # (layer, position)


def _fit(method, ctx: FitContext, config, directory: RunDirectory, hidden_size: int) -> dict[tuple, object]:
    fit_root = methods_dir(directory.path) / method.fitted_by
    stage = fit_stage(method.fitted_by)
    if directory.done(stage):
        return load_candidates(fit_root, hidden_size)
    log(f"fitting {method.fitted_by} on {ctx.train_harmful.shape[0]} + {ctx.train_harmless.shape[0]} train prompts")
    with directory.stage(stage) as info:
        clear_fit(fit_root)  # whatever an interrupted fit left
        candidates = get_method(method.fitted_by).fit(ctx, config.methods)
        save_candidates(fit_root, candidates)
        write_json(fit_root / "fit.json", {"candidates": len(candidates), "methods": config.methods.model_dump()})
        info["candidates"] = len(candidates)
    return candidates


def _dim_cells(result: Extraction, name: str, selection: SelectionConfig) -> dict[str, tuple[int, int]]:
    """With ``selection.candidates == "dim"``, the ``(layer, position)`` DiM chose at each scope, where a method
    other than DiM may choose; where DiM chose nothing, its closest candidate's cell (the location the study
    compares DiM at), said in the log; scopes where DiM scored no candidate are absent (any cell there). Else
    empty."""
    if selection.candidates == "all" or name == "dim":
        return {}
    cells = {}
    for (method, scope), selection_ in result.selections.items():
        at = selection_.chosen or selection_.closest()
        if method != "dim" or at is None:
            continue
        if selection_.chosen is None:
            log(f"DiM chose nothing at scope {scope}: {name} is selected at DiM's closest candidate "
                f"(layer {at.layer}, position {at.position})")
        cells[scope] = (at.layer, at.position)
    return cells


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


def _save_selection(run_dir: Path, selection: Selection, candidates: dict, ranked_layers: list[int]
                    ) -> tuple[object, dict]:
    """Write the selection's table and chosen artifact; returns the artifact and what its stage marker records."""
    write_csv(selection.table(), selection_table(run_dir, selection.method, selection.scope))
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
    return chosen, {"chosen": selection.chosen is not None, "closest": record, "timings_s": selection.timings_s}


def _load_selection(directory: RunDirectory, method: str, scope: str, hidden_size: int) -> tuple[Selection, object]:
    """A finished selection read back (its stage's marker holds the timings)."""
    finished = directory.record(selection_stage(method, scope))
    cands = candidates_from_table(pd.read_csv(selection_table(directory.path, method, scope)))
    chosen = next((c for c in cands if c.status.startswith("selected")), None)
    return (Selection(method, scope, cands, chosen, finished["info"].get("timings_s", {})),
            load_chosen(directory.path, method, scope, hidden_size))


def extract(lm, splits, config, run_dir: str | Path, methods: Sequence[str] = ("dim",)) -> Extraction:
    """Fit and select ``methods`` (DiM always first) at every scope of ``config.selection.scopes``; resumable
    stage by stage (see the module docstring)."""
    directory = RunDirectory(run_dir)
    run_dir = directory.path
    wanted = ["dim", *[m for m in dict.fromkeys(methods) if m != "dim"]]
    for name in wanted:
        get_method(name)
    result = Extraction()
    ctx = None
    baseline = prior = None
    kl_cache: dict = {}
    val_harmful, val_harmless = splits.val_harmful.texts, splits.val_harmless.texts
    for name in wanted:
        method = METHODS[name]
        todo = [s for s in config.selection.scopes if not directory.done(selection_stage(name, s))]
        if todo or not directory.done(fit_stage(method.fitted_by)):
            ctx = ctx or _context(lm, splits, config, directory)
        at_dim = _dim_cells(result, name, config.selection)
        if ctx:
            ctx.selectable = set(at_dim.values()) or None
        candidates = _fit(method, ctx, config, directory, lm.hidden_size) if ctx else {}
        for scope in config.selection.scopes:
            stage = selection_stage(name, scope)
            if directory.done(stage):
                selection, chosen = _load_selection(directory, name, scope, lm.hidden_size)
            else:
                with directory.stage(stage) as info:
                    clear_selection(run_dir, name, scope)  # whatever an interrupted selection left
                    if baseline is None:
                        log(f"baseline scores on {len(val_harmful)} + {len(val_harmless)} val prompts")
                        baseline = Baseline.compute(lm, val_harmful, val_harmless, config.selection.batch_size)
                    if prior is None and config.selection.mode == "fast":
                        prior = attribution_prior(lm, val_harmful, baseline, config.selection)
                    ranked_layers = [layer for layer, _ in (ctx.ranked or [])]
                    selection = select_candidates(
                        lm, name, _at_cell(candidates, at_dim.get(scope)), scope, val_harmful, val_harmless,
                        config.selection, config.methods, baseline, prior, kl_cache, ranked_layers, fits=ctx)
                    chosen, record = _save_selection(run_dir, selection, candidates, ranked_layers)
                    info |= record
            result.selections[(name, scope)] = selection
            result.chosen[(name, scope)] = chosen
            if name == "dim" and not directory.done(RANKING_STAGE):
                with directory.stage(RANKING_STAGE) as info:
                    ranked = _dim_ranking(selection)
                    write_json(run_dir / "ranking.json", {"ranked": ranked, "scope": scope})
                    info["scope"] = scope
                if ctx is not None:
                    ctx.ranked = [tuple(cell) for cell in ranked]
    if directory.done(RANKING_STAGE):
        result.ranked = _ranking(directory)
    result.fits = ctx
    return result


def _dim_ranking(selection: Selection) -> list[list[int]]:
    """DiM ``(layer, position)`` best first, one per layer (the candidates with any bypass score, ranked)."""
    cells: dict[int, int] = {}
    for c in sorted(selection.candidates, key=Candidate.rank_key):
        if c.layer is not None and not all(math.isnan(v) for v in (c.bypass, c.screen_bypass, c.estimated_bypass)):
            cells.setdefault(c.layer, c.position)
    return [[layer, position] for layer, position in cells.items()]
