"""Held-out scores of an ``optimize`` run's trials, beside the validation scores the search chose them by, under
every chat context and on two request sets of different style.

Harmful: the fixed held-out AdvBench slice (``advbench``) and HarmBench's standard behaviours (``harmbench``);
harmless: the fixed held-out generic requests (:mod:`refusal_lab.data.sources`), all through
:func:`refusal_lab.pipeline.heldout.eval_prompts`, so the same held-out rule checks them against every prompt the
search saw (``RUN_DIR/seen``). Each is formatted in every chat context of
:data:`~refusal_lab.models.contexts.CONTEXTS` (the template's default system prompt, none, "You are a helpful
assistant.", a persona, a terse instruction, a benign earlier exchange). Scored by the one evaluator
(:class:`~refusal_lab.pipeline.edit_scoring.EditScorer`, one store ``RUN_DIR/heldout/`` whose keys include the
context): refusals among greedy completions of ``max_new_tokens`` judged by the run's judge (heretic's markers by
default) per (context, set); KL: mean first-token ``KL(p_base ‖ p_trial)`` on the harmless requests per context,
the base model formatted in the same context, as in the search.

:func:`assess_front` gives both the per-(trial, context, set) rows and one summary row per trial: the figures under
the default context on AdvBench (``heldout_*``, what this assessment reported before contexts existed), the worst
refusal rate over every (context, set) (``worst_*``) and the largest KL over the contexts (``worst_kl``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from refusal_lab.models.contexts import CONTEXTS, DEFAULT
from refusal_lab.pipeline.compliance import judge_edits
from refusal_lab.pipeline.edit_scoring import EditScorer, ScorerSet
from refusal_lab.pipeline.export import trial_ablation
from refusal_lab.pipeline.heldout import eval_prompts
from refusal_lab.pipeline.judging import make_judge
from refusal_lab.pipeline.search_data import OptimizeConfig
from refusal_lab.search.edit import Abliteration

#: The held-out harmful request sets scored (names of :data:`refusal_lab.pipeline.heldout.HELDOUT_SETS`).
REQUEST_SETS = ("advbench", "harmbench")


@dataclass
class Assessment:
    """``summary``: one row per trial (baseline first); ``contexts``: one row per (trial, context, set)."""

    summary: pd.DataFrame
    contexts: pd.DataFrame


def heldout_scorer(lm, run_dir: str | Path, config: OptimizeConfig, n: int = 100, context: str = DEFAULT.name,
                   request_set: str = REQUEST_SETS[0]) -> EditScorer:
    """An :class:`EditScorer` of one context and request set on the first ``n`` held-out requests per side,
    checked against ``RUN_DIR/seen`` (its own store ``RUN_DIR/heldout/``: not beside an open :class:`HeldoutScorer`)."""
    harmful, harmless = eval_prompts(None, request_set, n, run_dir)
    return EditScorer(lm.in_context(context), Path(run_dir) / "heldout", harmful, harmless, make_judge(config.judge),
                      config.max_new_tokens, config.generate_batch)


class HeldoutScorer(ScorerSet):
    """A :class:`ScorerSet` in ``RUN_DIR/heldout``, one scorer per (context, request set), on the first ``n``
    held-out requests per side; KL is scored per context, with the first set. Use as a context manager."""

    def __init__(self, lm, run_dir: str | Path, config: OptimizeConfig, n: int = 100,
                 contexts: Sequence[str] = tuple(CONTEXTS), sets: Sequence[str] = REQUEST_SETS):
        prompts = {name: eval_prompts(None, name, n, run_dir) for name in sets}  # checked before anything runs
        super().__init__(Path(run_dir) / "heldout", {
            (context, name): (lm.in_context(context), harmful, harmless if name == sets[0] else [])
            for context in contexts for name, (harmful, harmless) in prompts.items()},
            make_judge(config.judge), config.max_new_tokens, config.generate_batch)

    def score(self, name: str, ablation: Abliteration | None, **params) -> list[dict]:
        """``{"context", "set", "refusals", "n", "kl"}`` per (context, set) of one edit (None: the unmodified
        model); ``kl`` is the context's, on the harmless requests (the same for each set)."""
        rows = [{"context": context, "set": request_set, **scored}
                for (context, request_set), scored in super().score(name, ablation, **params).items()]
        kl = {row["context"]: row["kl"] for row in rows if "kl" in row}
        return [row | {"kl": kl.get(row["context"])} for row in rows]


def summarise(trial: str, rows: list[dict]) -> dict:
    """One trial's summary: the default context on the first set (``heldout_*``), the worst (context, set) by
    refusal rate and the context with the largest KL."""
    first = next((r for r in rows if r["context"] == DEFAULT.name), rows[0])  # rows run set-minor: the first set
    worst = max(rows, key=lambda r: r["refusals"] / max(r["n"], 1))
    worst_kl = max(rows, key=lambda r: r["kl"] if r["kl"] is not None else float("-inf"))
    return {"trial": trial, "heldout_refusals": first["refusals"], "heldout_n": first["n"],
            "heldout_kl": first["kl"], "worst_refusals": worst["refusals"], "worst_n": worst["n"],
            "worst_at": f"{worst['context']}/{worst['set']}", "worst_kl": worst_kl["kl"],
            "worst_kl_at": worst_kl["context"]}


def assess_front(lm, run_dir: str | Path, n: int = 100, trials: list[int] | None = None,
                 contexts: Sequence[str] = tuple(CONTEXTS), sets: Sequence[str] = REQUEST_SETS) -> Assessment:
    """The Pareto trials (or ``trials``) with their validation and held-out refusals and KL under every context and
    on every request set (see the module docstring); first: the baseline."""
    run_dir = Path(run_dir)
    config = OptimizeConfig.model_validate(json.loads((run_dir / "config.json").read_text()))
    pareto = pd.read_csv(run_dir / "pareto.csv")
    trials = trials if trials is not None else pareto["trial"].tolist()
    search = json.loads((run_dir / "search.json").read_text())
    validation = {"baseline": {"val_refusals": search["baseline_refusals"], "val_n": search["n"], "val_kl": 0.0}}
    for trial in trials:
        scored = pareto[pareto["trial"] == trial]
        row = scored.iloc[0] if not scored.empty else {"refusals": None, "n": None, "kl": None}
        validation[str(trial)] = {"val_refusals": row["refusals"], "val_n": row["n"], "val_kl": row["kl"]}
    summary, per_context = [], []
    with HeldoutScorer(lm, run_dir, config, n, contexts, sets) as scorer:
        for trial in ["baseline", *trials]:
            rows = scorer.score("baseline", None) if trial == "baseline" else scorer.score(
                f"trial-{trial}", trial_ablation(lm, run_dir, trial), trial=trial)
            summary.append({**summarise(str(trial), rows), **validation[str(trial)]})
            per_context += [{"trial": str(trial), **row} for row in rows]
    columns = ["trial", "val_refusals", "val_n", "val_kl", "heldout_refusals", "heldout_n", "heldout_kl",
               "worst_refusals", "worst_n", "worst_at", "worst_kl", "worst_kl_at"]
    return Assessment(pd.DataFrame(summary)[columns], pd.DataFrame(per_context))


def judge_heldout(lm, run_dir: str | Path, trials: list[int], n: int = 50, contexts: Sequence[str] = tuple(CONTEXTS),
                  sets: Sequence[str] = REQUEST_SETS) -> pd.DataFrame:
    """The run's llm judge (``compliance_check``) beside its phrase judge on the first ``n`` held-out requests of
    every request set, formatted in every chat context, for the baseline and ``trials``
    (:func:`~refusal_lab.pipeline.compliance.judge_edits`, store ``RUN_DIR/heldout``): rows ``trial``, ``context``,
    ``set``, ``n`` and :data:`~refusal_lab.pipeline.compliance.COUNTS`."""
    run_dir = Path(run_dir)
    config = OptimizeConfig.model_validate(json.loads((run_dir / "config.json").read_text()))
    check = config.compliance_check
    phrase, llm = make_judge(config.judge), make_judge(check.judge or "llm", ablate_run=check.ablate)
    edits = {t: trial_ablation(lm, run_dir, t) for t in trials}
    harmful = {name: eval_prompts(None, name, n, run_dir)[0] for name in sets}  # checked before anything runs
    frames = [judge_edits(lm, run_dir / "heldout", dict.fromkeys(contexts, prompts), edits, phrase, llm,
                          check.max_new_tokens, config.generate_batch).assign(set=name)
              for name, prompts in harmful.items()]
    return pd.concat(frames, ignore_index=True)
