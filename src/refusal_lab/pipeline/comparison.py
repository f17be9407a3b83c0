"""The one evaluator: every intervention kind × scope on held-out prompts, beside a random control and the baseline.

Each row applies the artifact its method chose *at that scope* (``selected_at`` = the row's scope); where the method
was not selected at that scope, the artifact chosen at its first selected scope (``selected_at`` says which), and
where its selection chose nothing, its best-bypass candidate (``selection = closest``). Controls: a random direction
of the same norm (ActAdd, ablation) or a random orthonormal basis of the same rank (projections) at the same sites
and scope, ``control_seeds`` seeds. Measures: ``first-token`` — the fraction of prompts whose refusal score (log-odds
of the family's refusal tokens at the first generated position) is > 0; ``generation`` — greedy ``max_new_tokens``
tokens judged by the substring judge (completions cached under ``comparison/<measure>/generations/``); ``landing`` —
the first-token rates plus where each row's activations land against the clean train clusters, at every layer
(:mod:`refusal_lab.analysis.landing`; the final layer's figures in ``comparison.csv``, every layer in ``landing.csv``).

Every row carries refusal rates on held-out harmful and harmless prompts with 95 % Wilson intervals, the first-token
KL on the held-out harmless prompts (``kl_harmless``) beside the validation KL selection saw (``kl_val``), and Δ vs
the baseline. Written to ``RUN_DIR/comparison/<measure>/``: ``rows.jsonl`` (one finished row a line; a rerun skips
them), ``comparison.csv``, ``rank_k_sweep.csv``, ``config.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from pydantic import NonNegativeInt, PositiveInt
from rich.console import Console
from rich.progress import Progress

from refusal_lab.analysis.landing import landing
from refusal_lab.core.artifacts import Direction, MethodArtifacts, Provenance
from refusal_lab.core.config import ConfigModel
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.io import read_json, write_csv, write_json
from refusal_lab.core.vocabulary import (
    ADDITIVE_KINDS,
    ARTIFACT_OF,
    CENTERABLE_KINDS,
    FLIP_VARIANTS,
    KINDS,
    SCOPES,
    FlipVariant,
    Kind,
    Scope,
    Site,
)
from refusal_lab.data import heldout_advbench, heldout_generic
from refusal_lab.evaluation.generate import cached_generations
from refusal_lab.evaluation.judges import is_refusal
from refusal_lab.evaluation.metrics import Rate
from refusal_lab.fitting.inlp_order import reorder_inlp
from refusal_lab.fitting.subspace import stack_subspace
from refusal_lab.interventions.factory import build_intervention
from refusal_lab.interventions.hooks import Intervention
from refusal_lab.interventions.scoring import kl_divergence, last_token_logprobs, refusal_scores
from refusal_lab.methods.registry import get_method
from refusal_lab.pipeline.artifacts import chosen_for_scope, load_candidates, methods_dir
from refusal_lab.pipeline.heldout import require_unseen, seen_prompts

_NO_CONTROL = ("leace",)

log = Console(stderr=True).log


class CompareConfig(ConfigModel):
    """What the comparison evaluates (``[compare]`` in a run config; saved as ``comparison/<measure>/config.json``)."""

    measure: Literal["first-token", "generation", "landing"] = "first-token"
    eval_set: Literal["test", "generic"] = "test"  # the run's test split, or held-out AdvBench vs generic requests
    n_eval: PositiveInt | None = None  # held-out prompts per side (None: the whole test split)
    kinds: list[Kind] = list(KINDS)
    scopes: list[Scope] = list(SCOPES)
    actadd_scales: list[float] | None = None  # ±each; None: the scale the direction's selection induced at
    actadd_scopes: list[Scope] = ["layer"]
    flip_alpha: float = 2.0
    flip_variants: list[FlipVariant] = list(FLIP_VARIANTS)
    rank_k: PositiveInt = 1  # k of the rank-k row in the main table (the sweep covers every k)
    subspace_ks: list[PositiveInt] = []  # subspace rows with the stack's leading k rows (empty: one row, every row)
    # where every intervention acts (None: the factory's defaults, resid_pre for ActAdd and the input flip, all
    # three sites otherwise)
    sites: list[Site] | None = None
    rank_k_orders: list[Literal["iteration", "dim_share"]] = ["iteration", "dim_share"]  # what "first k" means
    sweep_scopes: list[Scope] = ["layer"]
    sweep_max_k: NonNegativeInt | None = None  # default: the INLP rank; 0 (or no rank-k kind) turns it off
    sweep_controls: bool = True
    center_variants: bool = True  # also nullspace / flip / rank-k through the training mean
    control_seeds: NonNegativeInt = 1
    max_new_tokens: PositiveInt = 24
    batch_size: PositiveInt = 32


@dataclass
class Condition:
    """One row: an intervention list and how it was built."""

    name: str
    table: str  # "comparison" or "rank_k_sweep"
    kind: str
    scope: str = ""
    method: str = ""
    layer: int | None = None
    position: int | None = None
    k: int | None = None
    alpha: float | None = None
    variant: str | None = None
    order: str | None = None  # rank-k: which k INLP directions come first
    scale: float | None = None
    center: bool = False
    control: bool = False
    seed: int | None = None
    control_for: str | None = None
    selected_at: str | None = None
    selection: str = "selected"
    kl_val: float = math.nan
    interventions: list[Intervention] = field(default_factory=list, repr=False)

    def meta(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "interventions"}


def _full_stack(run_dir: Path, hidden_size: int):
    """The subspace method's whole stack (its candidate with the most rows), or None where it was not fitted."""
    root = methods_dir(run_dir) / "subspace"
    if not (root / "fit.json").exists():
        return None
    candidates = load_candidates(root, hidden_size)
    return max(candidates.values(), key=lambda stack: stack.rank) if candidates else None


def selected_scale(artifact) -> float:
    """The ActAdd scale the artifact's selection induced refusal at; 1 where it found none (a closest candidate
    records NaN) or was never selected."""
    induced_at = artifact.provenance.extra.get("selection", {}).get("induce_scale")
    return float(induced_at) if induced_at and math.isfinite(induced_at) else 1.0


def random_like(artifact, seed: int):
    """The control for ``artifact``: a random direction of the same norm, or a random orthonormal basis of the same
    rank (seeded; recorded in provenance)."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    p = artifact.provenance
    provenance = Provenance(p.model, "random", p.hidden_size, p.layer, p.position, p.data_hash,
                            {**p.extra, "seed": seed})
    if isinstance(artifact, Direction):
        noise = torch.randn(artifact.vector.shape, generator=generator)
        return Direction(noise / noise.norm() * artifact.norm, provenance)
    return stack_subspace(list(torch.randn(artifact.rank, artifact.basis.shape[1], generator=generator)), provenance)


def plan_conditions(run_dir: Path, config: CompareConfig, n_layers: int, hidden_size: int,
                    ranked_layers: list[int], fits=None) -> tuple[list[Condition], list[str]]:
    """Every row of both tables (baseline first), and the kinds skipped for want of an artifact."""
    conditions = [Condition("baseline", "both", "none")]
    skipped: list[str] = []

    def add(table: str, kind: str, scope: str, artifact, selected_at: str, **params) -> None:
        if params.get("order"):  # rank-k: the INLP rows in the named order (refusal_lab.fitting.inlp_order)
            artifact = reorder_inlp(artifact, params["order"])
        p, method = artifact.provenance, ARTIFACT_OF[kind]
        layer = p.layer if p.layer is not None else (p.extra.get("layers") or [None])[0]
        center = params.pop("center", False)
        extra = {"center": True, "centers": fits.centers(p.position)} if center and fits else (
            {"center": True} if center else {})
        if kind == "leace" and scope != "layer" and fits is not None:
            extra["erasers"] = fits.erasers(p.position)
        if config.sites is not None:
            extra["sites"] = config.sites

        def build(art):
            return build_intervention(kind, MethodArtifacts(**{"inlp" if method == "flip" else method: art}),
                                      layer=layer, scope=scope, n_layers=n_layers, ranked_layers=ranked_layers,
                                      **{n: v for n, v in params.items() if n != "order"}, **extra)

        label = "".join(f",{n}={v:g}" if isinstance(v, float | int) else f",{n}={v}"
                        for n, v in params.items() if v is not None) + (",centered" if center else "")
        name = f"{kind}[{scope}{label}]"
        selection = p.extra.get("selection", {})
        # the validation KL selection measured, where this row applies exactly what selection applied
        same = (kind == get_method(method).kind and scope == selected_at and not center
                and (params.get("scale") or -1) < 0)
        main = Condition(name, table, kind, scope, method, layer, p.position, params.get("k"), params.get("alpha"),
                         params.get("flip_variant"), params.get("order"), params.get("scale"), center,
                         selected_at=selected_at,
                         selection=selection.get("status", "selected"),
                         kl_val=selection.get("kl", math.nan) if same else math.nan,
                         interventions=build(artifact))
        conditions.append(main)
        if kind in _NO_CONTROL or (table == "rank_k_sweep" and not config.sweep_controls):
            return
        for seed in range(config.control_seeds):
            control = random_like(artifact.truncate(params["k"]) if params.get("k") else artifact, seed)
            conditions.append(Condition(f"{name}~random{seed}", table, kind, scope, "random", layer, p.position,
                                        params.get("k"), params.get("alpha"), params.get("flip_variant"),
                                        params.get("order"), params.get("scale"), center, True, seed, name,
                                        selected_at,
                                        interventions=build(control)))

    for kind in config.kinds:
        scopes = config.actadd_scopes if kind in ADDITIVE_KINDS else config.scopes
        centers_for = [False, True] if config.center_variants and kind in CENTERABLE_KINDS else [False]
        for scope in scopes:
            artifact, selected_at = chosen_for_scope(run_dir, ARTIFACT_OF[kind], scope, hidden_size)
            if artifact is None:
                skipped.append(f"{kind}: no {ARTIFACT_OF[kind]} artifact in {run_dir}; run `refusal-lab extract "
                               f"--method {ARTIFACT_OF[kind]}`")
                break
            for center in centers_for:
                if kind in ADDITIVE_KINDS:
                    scales = config.actadd_scales or [selected_scale(artifact)]
                    for s in scales:
                        for sign in (1.0, -1.0):
                            add("comparison", kind, scope, artifact, selected_at, scale=float(sign * s))
                elif kind == "flip":
                    for variant in config.flip_variants:
                        add("comparison", kind, scope, artifact, selected_at, alpha=config.flip_alpha,
                            flip_variant=variant, center=center)
                elif kind == "subspace" and config.subspace_ks:
                    stack = _full_stack(run_dir, hidden_size) or artifact  # selection may have kept fewer rows
                    for k in dict.fromkeys(min(k, stack.rank) for k in config.subspace_ks):
                        add("comparison", kind, scope, stack, selected_at, k=k)
                elif kind == "rank-k":
                    for order in config.rank_k_orders:
                        add("comparison", kind, scope, artifact, selected_at, k=config.rank_k, order=order,
                            center=center)
                else:
                    add("comparison", kind, scope, artifact, selected_at, center=center)
    if config.sweep_max_k != 0 and "rank-k" in config.kinds:
        for scope in config.sweep_scopes:
            inlp, selected_at = chosen_for_scope(run_dir, "inlp", scope, hidden_size)
            if inlp is None:
                skipped.append("rank-k sweep: no INLP artifact")
                break
            for order in config.rank_k_orders:
                for k in range(1, min(config.sweep_max_k or inlp.rank, inlp.rank) + 1):
                    add("rank_k_sweep", "rank-k", scope, inlp, selected_at, k=k, order=order)
    return conditions, skipped


def _evaluate(lm, condition: Condition, harmful: list[str], harmless: list[str], base_harmless_lp: torch.Tensor,
              config: CompareConfig, out_dir: Path, fits=None) -> dict:
    ivs = condition.interventions
    row = condition.meta()
    harmless_lp = last_token_logprobs(lm, harmless, ivs, config.batch_size)
    harmless_scores = refusal_scores(harmless_lp, lm.refusal_token_ids)
    row["kl_harmless"] = float(kl_divergence(base_harmless_lp, harmless_lp).mean())
    row["mean_score_harmless"] = float(harmless_scores.mean())
    if config.measure == "landing":
        position = condition.position if condition.position is not None else -1
        for side, prompts in (("harmful", harmful), ("harmless", harmless)):
            where = landing(lm, prompts, ivs, fits.harmful_mean, fits.harmless_mean, position, config.batch_size)
            row |= {f"landing_{side}": where.coordinate, f"nearer_harmful_{side}": where.nearer_harmful}
            row |= {f"landing_{side}_last": where.coordinate[-1],
                    f"nearer_harmful_{side}_last": where.nearer_harmful[-1]}
    if config.measure in ("first-token", "landing"):
        harmful_scores = refusal_scores(last_token_logprobs(lm, harmful, ivs, config.batch_size),
                                        lm.refusal_token_ids)
        row["mean_score_harmful"] = float(harmful_scores.mean())
        rates = {"harmful": Rate(int((harmful_scores > 0).sum()), len(harmful)),
                 "harmless": Rate(int((harmless_scores > 0).sum()), len(harmless))}
    else:
        row["mean_score_harmful"] = math.nan
        rates = {}
        for side, prompts in (("harmful", harmful), ("harmless", harmless)):
            path = out_dir / "generations" / f"{_slug(condition.name)}-{side}.jsonl"
            completions = cached_generations(lm, path, prompts, ivs, config.max_new_tokens, config.batch_size)
            rates[side] = Rate(sum(map(is_refusal, completions)), len(completions))
    for side, rate in rates.items():
        low, high = rate.wilson()
        row |= {f"n_{side}": rate.n, f"refusal_{side}": rate.value, f"ci_low_{side}": low, f"ci_high_{side}": high}
    return row


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.=+" else "_" for ch in name)


def _finish(rows: list[dict], table: str, baseline: dict) -> pd.DataFrame:
    frame = pd.DataFrame([baseline | {"table": table}] + [r for r in rows if r["table"] == table])
    for side in ("harmful", "harmless"):
        frame[f"delta_{side}"] = frame[f"refusal_{side}"] - baseline[f"refusal_{side}"]
    controls = frame[frame["control"].astype(bool)]
    if len(controls):
        means = controls.groupby("control_for")[["refusal_harmful", "refusal_harmless", "kl_harmless"]].mean()
        means.columns = [f"control_{c}" for c in means.columns]
        frame = frame.merge(means, how="left", left_on="name", right_index=True)
        for side in ("harmful", "harmless"):
            frame[f"delta_{side}_vs_control"] = frame[f"refusal_{side}"] - frame[f"control_refusal_{side}"]
    return frame


_PER_LAYER = ("landing_harmful", "landing_harmless", "nearer_harmful_harmful", "nearer_harmful_harmless")


def _landing_table(rows: list[dict]) -> pd.DataFrame:
    """Long form of the landing measure: one line per (condition, prompt side, layer)."""
    return pd.DataFrame([{"name": r["name"], "side": side, "layer": layer, "coordinate": t, "nearer_harmful": near}
                         for r in rows for side in ("harmful", "harmless")
                         for layer, (t, near) in enumerate(zip(r[f"landing_{side}"], r[f"nearer_harmful_{side}"]))])


@dataclass
class Comparison:
    comparison: pd.DataFrame
    rank_k_sweep: pd.DataFrame
    skipped: list[str]
    out_dir: Path


def eval_prompts(splits, eval_set: str, n: int | None = None,
                 run_dir: str | Path | None = None) -> tuple[list[str], list[str]]:
    """Held-out (harmful, harmless) prompts, the first ``n`` per side: the run's test split, or (``generic``) the
    fixed held-out AdvBench requests and generic everyday requests (:mod:`refusal_lab.data.sources`), never in any
    train / val split. Checked against every prompt extraction, selection or a search saw
    (:mod:`refusal_lab.pipeline.heldout`)."""
    if eval_set == "generic":
        harmful, harmless = heldout_advbench(splits).texts, heldout_generic(splits).texts
    else:
        harmful, harmless = splits.test_harmful.texts, splits.test_harmless.texts
    harmful, harmless = harmful[:n], harmless[:n]
    seen = seen_prompts(splits, run_dir)
    require_unseen(harmful, seen, "harmful evaluation prompts")
    require_unseen(harmless, seen, "harmless evaluation prompts")
    return harmful, harmless


def compare(lm, run_dir: str | Path, splits, config: CompareConfig, fits=None) -> Comparison:
    """Evaluate every planned condition on the test split of ``splits`` and write the tables (resumable).
    ``fits`` (a :class:`~refusal_lab.methods.registry.FitContext`) gives the affine maps (centred variants, LEACE)
    one fit per layer at multi-layer scopes; without it those rows stay at the layer they were fitted at."""
    run_dir = Path(run_dir)
    if config.measure == "landing" and fits is None:
        raise RefusalLabError("the landing measure needs the train activations' class means (pass fits)")
    if not (run_dir / "ranking.json").exists():
        raise RefusalLabError(f"{run_dir} has no selected DiM direction (ranking.json); run `refusal-lab extract "
                              "--out RUN_DIR` first")
    harmful, harmless = eval_prompts(splits, config.eval_set, config.n_eval, run_dir)
    out_dir = run_dir / "comparison" / (config.measure + ("" if config.eval_set == "test" else f"-{config.eval_set}"))
    saved = out_dir / "config.json"
    payload = json.loads(config.model_dump_json()) | {"n_harmful": len(harmful), "n_harmless": len(harmless)}
    if saved.exists() and read_json(saved) != payload:
        raise RefusalLabError(f"{out_dir} holds a comparison with different settings; move it away or rerun with "
                              "the same options")
    write_json(saved, payload)

    ranked = [layer for layer, _ in read_json(run_dir / "ranking.json")["ranked"]]
    conditions, skipped = plan_conditions(run_dir, config, lm.n_layers, lm.hidden_size, ranked, fits)
    for note in skipped:
        log(f"skipped {note}")
    rows_path = out_dir / "rows.jsonl"
    done: dict[str, dict] = {}
    if rows_path.exists():
        for line in rows_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut off by an interruption
                continue
            done[row["name"]] = row
    base_harmless_lp = last_token_logprobs(lm, harmless, batch_size=config.batch_size)
    # a row is keyed by its name; one in both tables (rank-k at k = rank_k) is evaluated once
    todo = list({c.name: c for c in reversed(conditions) if c.name not in done}.values())[::-1]
    log(f"comparison: {len(conditions)} conditions, {len(todo)} to evaluate on {len(harmful)} + {len(harmless)} "
        f"held-out prompts ({config.measure})")
    with open(rows_path, "a") as f, Progress() as progress:
        task = progress.add_task("conditions", total=len(todo))
        for condition in todo:
            progress.update(task, description=condition.name)
            row = _evaluate(lm, condition, harmful, harmless, base_harmless_lp, config, out_dir, fits)
            f.write(json.dumps(row) + "\n")
            f.flush()
            done[row["name"]] = row
            progress.advance(task)
    rows = [done[c.name] | {"table": c.table} for c in conditions]
    tables = {table: _finish(rows[1:], table, rows[0]) for table in ("comparison", "rank_k_sweep")}
    for table, frame in tables.items():
        write_csv(frame.drop(columns=[c for c in _PER_LAYER if c in frame]), out_dir / f"{table}.csv")
    if config.measure == "landing":
        write_csv(_landing_table(rows), out_dir / "landing.csv")
    write_json(out_dir / "summary.json", {"skipped": skipped, "conditions": len(conditions),
                                           "n_harmful": len(harmful), "n_harmless": len(harmless)})
    return Comparison(tables["comparison"], tables["rank_k_sweep"], skipped, out_dir)


__all__ = ["Comparison", "CompareConfig", "Condition", "compare", "plan_conditions", "random_like"]
