"""``compare --run``: every condition a run offers (:mod:`refusal_lab.pipeline.conditions`) on held-out prompts,
scored by the one evaluator (:class:`~refusal_lab.evaluation.suite.Suite`) and laid out as two wide tables.

Measures: ``first-token`` — the fraction of prompts whose refusal score (log-odds of the family's refusal tokens at
the first generated position) is > 0 (the suite's ``first_token_refusal`` metrics); ``generation`` — greedy
``max_new_tokens`` tokens judged by the substring judge (``refusal`` / ``harmless_refusal``); ``landing`` — the
first-token rates plus where each condition's activations land against the clean train clusters, at every layer
(:mod:`refusal_lab.evaluation.landing`; the final layer's figures in ``comparison.csv``, every layer in
``landing.csv``).

Every row carries refusal rates on held-out harmful and harmless prompts with 95 % Wilson intervals, the first-token
KL on the held-out harmless prompts (``kl_harmless``) beside the validation KL selection saw (``kl_val``), and Δ vs
the baseline (and vs the mean of its random controls). Written to ``RUN_DIR/comparison/<measure>/``: the suite's
store ``results.duckdb`` (per-item values and generations; a rerun computes only what is missing),
``comparison.csv``, ``rank_k_sweep.csv``, ``summary.json``, and ``fingerprint.json`` binding the settings
(:class:`~refusal_lab.pipeline.rundir.RunDirectory`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import PositiveInt
from rich.console import Console

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.io import write_csv, write_json
from refusal_lab.evaluation.judges import SubstringJudge
from refusal_lab.evaluation.store import ResultsStore
from refusal_lab.evaluation.suite import Suite, data_hash
from refusal_lab.pipeline.artifacts import ranked_layers
from refusal_lab.pipeline.conditions import PlanConfig, plan_conditions
from refusal_lab.pipeline.heldout import eval_prompts
from refusal_lab.pipeline.rundir import RunDirectory

log = Console(stderr=True).log

#: per measure, the suite metric that gives each side's refusal rate
REFUSAL_METRICS = {"first-token": {"first_token_refusal": "harmful", "first_token_harmless_refusal": "harmless"},
                   "landing": {"first_token_refusal": "harmful", "first_token_harmless_refusal": "harmless"},
                   "generation": {"refusal": "harmful", "harmless_refusal": "harmless"}}


class CompareConfig(PlanConfig):
    """What the comparison evaluates (``[compare]`` in a run config): the conditions to plan, and how to score them."""

    measure: Literal["first-token", "generation", "landing"] = "first-token"
    # the run's test split, or held-out AdvBench (generic / advbench) or HarmBench against generic requests
    eval_set: Literal["test", "generic", "advbench", "harmbench"] = "test"
    n_eval: PositiveInt | None = None  # held-out prompts per side (None: the whole test split)
    max_new_tokens: PositiveInt = 24
    batch_size: PositiveInt = 32

    def metrics(self) -> list[str]:
        landing = ["landing", "nearer_harmful"] if self.measure == "landing" else []
        return [*REFUSAL_METRICS[self.measure], "kl", *landing]


def _wide(rows: list[dict], measure: str, n_layers: int) -> dict[str, dict]:
    """The suite's long rows (one per condition × metric × …) as one wide row per condition name."""
    wide: dict[str, dict] = {}
    for r in rows:
        row = wide.setdefault(r["intervention"], {})
        side = REFUSAL_METRICS[measure].get(r["metric"])
        if side is not None:
            row |= {f"n_{side}": r["n"], f"refusal_{side}": r["value"], f"ci_low_{side}": r["ci_low"],
                    f"ci_high_{side}": r["ci_high"]}
        elif r["metric"] == "kl":
            row["kl_harmless"] = r["value"]
        elif r["metric"] in ("landing", "nearer_harmful"):
            column = "landing" if r["metric"] == "landing" else "nearer_harmful"
            row.setdefault(f"{column}_{r['dataset']}", [None] * n_layers)[r["layer"]] = r["value"]
            if r["layer"] == n_layers - 1:
                row[f"{column}_{r['dataset']}_last"] = r["value"]
    return wide


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


def compare(lm, run_dir: str | Path, splits, config: CompareConfig, fits=None) -> Comparison:
    """Score every planned condition on the held-out prompts of ``splits`` and write the tables (resumable).
    ``fits`` (a :class:`~refusal_lab.methods.registry.FitContext`) gives the affine maps one fit per layer at
    multi-layer scopes and the class means the landing measure needs."""
    run_dir = Path(run_dir)
    if config.measure == "landing" and fits is None:
        raise RefusalLabError("the landing measure needs the train activations' class means (pass fits)")
    ranked = ranked_layers(run_dir)
    harmful, harmless = eval_prompts(splits, config.eval_set, config.n_eval, run_dir)
    out_dir = run_dir / "comparison" / (config.measure + ("" if config.eval_set == "test" else f"-{config.eval_set}"))
    directory = RunDirectory(out_dir)
    directory.bind(data_hash=data_hash(["harmful", *harmful, "harmless", *harmless]), config=config)
    directory.bind(lm=lm)

    conditions, skipped = plan_conditions(run_dir, config, lm.n_layers, lm.hidden_size, ranked, fits)
    for note in skipped:
        log(f"skipped {note}")
    # a condition is keyed by its name; one in both tables (rank-k at k = rank_k) is scored once
    unique = list({c.name: c for c in reversed(conditions)}.values())[::-1]
    log(f"comparison: {len(unique)} conditions on {len(harmful)} + {len(harmless)} held-out prompts "
        f"({config.measure})")
    clusters = (fits.harmful_mean, fits.harmless_mean) if config.measure == "landing" else None
    store = ResultsStore(out_dir)
    try:
        with directory.stage("evaluate"):
            suite = Suite(lm, store, harmful, harmless, metrics=config.metrics(), judges=[SubstringJudge()],
                          lengths=[config.max_new_tokens], clusters=clusters, batch_size=config.batch_size)
            rows, _ = suite.run(unique)
    finally:
        store.close()
    wide = _wide(rows, config.measure, clusters[0].shape[0] if clusters else lm.n_layers)
    table_rows = [c.meta() | wide[c.name] for c in conditions]
    tables = {table: _finish(table_rows[1:], table, table_rows[0]) for table in ("comparison", "rank_k_sweep")}
    for table, frame in tables.items():
        write_csv(frame.drop(columns=[c for c in _PER_LAYER if c in frame]), out_dir / f"{table}.csv")
    if config.measure == "landing":
        write_csv(_landing_table(table_rows), out_dir / "landing.csv")
    write_json(out_dir / "summary.json", {"skipped": skipped, "conditions": len(conditions),
                                           "n_harmful": len(harmful), "n_harmless": len(harmless)})
    return Comparison(tables["comparison"], tables["rank_k_sweep"], skipped, out_dir)


__all__ = ["Comparison", "CompareConfig", "compare"]
