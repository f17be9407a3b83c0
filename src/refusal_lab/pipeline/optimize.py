"""``refusal-lab optimize``: a refusal × KL Pareto search over abliteration parameters (:mod:`.space`).

Data (:mod:`refusal_lab.pipeline.search_data`): class means of each training source's train prompts and the refined
direction. The scoring prompts are validation prompts: the ``mixed`` source's ``n_val`` harmful ones for the
survivors' generations (the first ``n_score`` of them for the first-token scores of every trial) and ``n_kl``
harmless ones of ``kl_source`` (default ``unmatched``: generic requests, the kind heretic's KL and the held-out
assessment use; ``mixed``: topic-matched and generic requests).

Chat contexts (``contexts``; default :data:`~refusal_lab.models.contexts.SEARCH_CONTEXTS`: the template's default
and four system prompts / earlier turns that no held-out context uses): the validation prompts are dealt round-robin
among them (prompt ``i`` to context ``i mod C``, :func:`~refusal_lab.pipeline.search_data.dealt`) and each is
formatted in its own, so a trial costs what one context did. Every figure below is taken per context and aggregated
by ``objective``: ``worst`` (default) the largest over the contexts, ``mean`` their mean; the per-context figures
are kept (each trial's ``contexts`` attribute, ``pareto.csv``'s ``…@<context>`` columns).

Search (Optuna, multivariate TPE with a constant liar, journal storage ``RUN_DIR/optuna.journal``, so a rerun
resumes and an interruption loses at most the trials in flight): ``trials_per_pass`` trials are asked at once and
scored in one batched forward over the validation prompts, each trial owning a block of batch rows
(:func:`refusal_lab.interventions.batched.batched_scores`, shared chat-template prefix, last-position logits only).
Objectives,
both minimised: the mean first-token refusal probability ``p_R`` on harmful prompts (refusal openings "I", "As")
and the mean first-token ``KL(p_base ‖ p_trial)`` on harmless prompts (heretic's KL), with the constraint
``KL ≤ max_kl`` (TPE samples near feasible trials rather than spending trials on edits too costly to keep).
Optionally (``capability_texts > 0``) a third, a cheap capability proxy: the token-averaged NLL of that many raw
texts of ``capability_corpus`` under the edit (:func:`capability_nll`; the unedited model's in ``search.json``).

Survivors: nothing is generated during the search. Afterwards the trials on the first-token Pareto front and the
lowest-``p_R`` trials with ``KL ≤ max_kl`` (``survivors`` of each at most; under a time budget only as many
as the time left affords) get greedy generations
(``max_new_tokens``) on the harmful validation prompts, judged by ``judge`` (default heretic's markers), scored by
the one evaluator (:class:`~refusal_lab.pipeline.edit_scoring.ScorerSet`, one scorer per context; generations in
``RUN_DIR/evaluation/results.duckdb``); every other trial is dominated on the cheap objectives and is never
generated for. ``RUN_DIR/pareto.csv`` holds the survivors' Pareto front on (``refusal_rate``: the contexts'
refusal rates aggregated by ``objective``, KL[, NLL]) with the total ``refusals`` of ``n``, each context's
figures and every parameter (and ``nll_change``, the NLL's change from the unedited model's).

Covert non-compliance (``compliance_check``; :mod:`~refusal_lab.pipeline.compliance`): the baseline and the front's
``compliance_check.trials`` lowest-refusal trials within ``max_kl`` are generated for again at
``compliance_check.max_new_tokens`` (128) and judged by the phrase judge and the llm judge; ``pareto.csv`` gains
``noncompliant_rate`` (aggregated like the refusal rate), ``noncompliant``, ``covert`` (non-refusals the llm judge
calls non-compliant), ``incoherent`` and ``noncompliant@<context>`` (NaN for trials not judged), and
``RUN_DIR/compliance.csv`` has the per-context counts. The export then chooses among the judged trials.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.io import write_csv, write_json
from refusal_lab.core.memory import release_freed_memory
from refusal_lab.pipeline.compliance import judge_edits, judged_trials, with_compliance
from refusal_lab.pipeline.judging import make_judge
from refusal_lab.interventions.batched import batched_scores
from refusal_lab.pipeline.edit_scoring import ScorerSet
from refusal_lab.pipeline.rundir import RunDirectory
from refusal_lab.pipeline.search_data import OptimizeConfig, SearchData, aggregate, capability_nll, dealt, prepare
from refusal_lab.search.edit import Abliteration
from refusal_lab.search.space import AbliterationParams, suggest

log = Console(stderr=True, width=None if sys.stderr.isatty() else 150).log
# settings a resumed search may change (the placement: where the model runs, not what it computes)
UNTRACKED = ("trials", "time_budget_min", "survivors", "device_map", "offload_folder", "capability_check",
             "compliance_check")
STUDY = "abliteration"  # the study's name in RUN_DIR/optuna.journal


def _storage(run_dir: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))


def open_study(run_dir: Path, config: OptimizeConfig):
    """The study in ``RUN_DIR/optuna.journal`` (created or resumed); trials left running by an interruption fail."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=config.seed,
                                         n_startup_trials=config.startup_trials)
    study = optuna.create_study(study_name=STUDY, storage=_storage(run_dir), sampler=sampler,
                                directions=["minimize"] * (3 if config.capability_texts else 2), load_if_exists=True)
    for trial in study.get_trials(states=[optuna.trial.TrialState.RUNNING]):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return study


def load_study(run_dir: Path):
    """The study of ``RUN_DIR``, read only: no trial is touched (a search may still be running)."""
    import optuna

    return optuna.load_study(study_name=STUDY, storage=_storage(run_dir))


def context_scores(lm, data: SearchData, ablations: list[Abliteration], config: OptimizeConfig) -> torch.Tensor:
    """``[A, C, 2]``: per ablation and chat context (``data.slices``), the mean first-token refusal probability on
    that context's harmful prompts and the mean first-token KL on its harmless ones, each context's prompts formatted
    in it (batched forwards of about ``rows_per_pass`` rows)."""
    candidates = [a.interventions(dense=True, lm=lm) for a in ablations]
    out = torch.empty(len(ablations), len(data.slices), 2)
    for c, part in enumerate(data.slices):
        scores, kl = batched_scores(lm.in_context(part.context), part.scored + part.harmless, candidates,
                                    part.base_logprobs, config.rows_per_pass)
        n = len(part.scored)
        out[:, c, 0], out[:, c, 1] = torch.sigmoid(scores[:, :n]).mean(1), kl[:, n:].mean(1)
    return out


def score_pass(lm, data: SearchData, ablations: list[Abliteration],
               config: OptimizeConfig) -> list[tuple[tuple[float, ...], dict]]:
    """Per ablation: (p_R, KL[, capability NLL]) — the first-token refusal probability on harmful and KL on harmless
    prompts, each aggregated over the chat contexts by ``config.objective`` (:func:`context_scores`), then the NLL
    (one ablation at a time) — and the per-context figures ``{context: {"p_refusal", "kl"}}``."""
    per_context = context_scores(lm, data, ablations, config)
    values = [tuple(v) for v in aggregate(per_context, config.objective).tolist()]
    if data.capability:
        values = [v + (capability_nll(lm, data, a, config),) for v, a in zip(values, ablations)]
    release_freed_memory()  # each pass's activations, so that the next lands on the steady footprint
    contexts = [{part.context: {"p_refusal": p, "kl": k} for part, (p, k) in zip(data.slices, rows)}
                for rows in per_context.tolist()]
    return list(zip(values, contexts))


def full_refined_trial(n_layers: int) -> dict:
    """Search-space values of the edit the refined direction was trained under: every writer at weight 1 (a flat
    kernel centred mid-depth reaching past both ends), the refined direction at every layer."""
    last = n_layers - 1
    flat = {"max_weight": 1.0, "max_weight_position": 0.5 * last, "min_weight_fraction": 1.0,
            "min_weight_distance": max(1.0, 0.8 * last)}
    return {"source": "refined", "position": -1, "direction_scope": "global", "direction_index": 0.5 * last,
            "orthogonalize": False, **{f"{c}.{k}": v for c in ("attn", "mlp") for k, v in flat.items()}}


def trial_params(trial) -> AbliterationParams:
    return AbliterationParams.model_validate(trial.user_attrs["params"])


def search(lm, data: SearchData, study, config: OptimizeConfig, deadline: float | None) -> None:
    """Run trials until ``config.trials`` are complete or the next pass (as long as the last one) would end after
    ``deadline`` (``time.monotonic()``)."""
    import optuna

    complete = lambda: len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE]))  # noqa: E731
    positions = list(range(-lm.n_post_instruction, 0))
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} trials"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("searching", total=config.trials, completed=complete())
        last_pass = 0.0
        while (done := complete()) < config.trials and (deadline is None or time.monotonic() + last_pass < deadline):
            began = time.monotonic()
            trials = [study.ask() for _ in range(min(config.trials_per_pass, config.trials - done))]
            params = [suggest(t, lm.n_layers, list(config.sources), positions, config.norm_preserving)
                      for t in trials]
            scored = score_pass(lm, data, [data.ablation(lm, p) for p in params], config)
            values = [value for value, _ in scored]
            for trial, p, (value, contexts) in zip(trials, params, scored):
                trial.set_user_attr("params", json.loads(p.model_dump_json()))
                trial.set_user_attr("contexts", contexts)
                trial.set_constraint("kl", value[1] - config.max_kl)  # feasible: KL ≤ max_kl
                study.tell(trial, list(value))
            last_pass = time.monotonic() - began
            best = min((v for v in values if v[1] <= config.max_kl), default=None)
            note = f"searching (pass best p_R {best[0]:.3f} @ KL {best[1]:.3f})" if best else "searching"
            progress.update(task, completed=complete(), description=note)
            if not progress.console.is_terminal:  # a log file gets one line per pass instead of a bar
                log(f"{complete()}/{config.trials} trials, {progress.tasks[0].elapsed:.0f} s; {note}")


def front(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Rows of ``frame`` not dominated on ``columns`` (all minimised), sorted by them; of equal rows, the first.

    Row ``i`` is dropped when a row before it in that order is ≤ it in every column (any row that dominates it sorts
    before it)."""
    ordered = frame.sort_values(list(columns))
    values = ordered[list(columns)].to_numpy(dtype=float)
    keep = [i for i in range(len(values)) if not (values[:i] <= values[i]).all(axis=1).any()]
    return ordered.iloc[keep]


def trial_table(study) -> pd.DataFrame:
    import optuna

    rows = [{"trial": t.number, "p_refusal": t.values[0], "kl": t.values[1],
             "nll": t.values[2] if len(t.values) > 2 else float("nan"), "params": trial_params(t),
             "contexts": t.user_attrs.get("contexts", {})}
            for t in study.get_trials(states=[optuna.trial.TrialState.COMPLETE])]
    return pd.DataFrame(rows, columns=["trial", "p_refusal", "kl", "nll", "params", "contexts"])


def survivors(table: pd.DataFrame, config: OptimizeConfig, limit: int | None = None) -> pd.DataFrame:
    """The ``survivors`` lowest-``p_R`` trials with ``KL ≤ max_kl`` and the first-token Pareto front (its
    ``survivors`` lowest-KL points within ``2·max_kl``), in priority order: the two lists in turn, lowest ``p_R``
    within the bound first; with ``limit``, the first ``limit`` (a time budget that affords no more generations)."""
    within = table[table["kl"] <= config.max_kl].nsmallest(config.survivors, "p_refusal")
    cheap = front(table, "kl", "p_refusal")
    cheap = cheap[cheap["kl"] <= 2 * config.max_kl].head(config.survivors)
    ranked = pd.concat([within.assign(rank=range(len(within)), side=0), cheap.assign(rank=range(len(cheap)), side=1)])
    ranked = ranked.sort_values(["rank", "side"]).drop_duplicates("trial").head(limit)
    return ranked.drop(columns=["rank", "side"])


def flatten(params: AbliterationParams) -> dict:
    return pd.json_normalize(json.loads(params.model_dump_json())).iloc[0].to_dict()


def optimize(lm, config: OptimizeConfig, run_dir: str | Path) -> pd.DataFrame:
    """The whole search (resumable; see module docstring); returns the Pareto front also written to
    ``RUN_DIR/pareto.csv``."""
    start = time.monotonic()
    run_dir = Path(run_dir)
    judge = make_judge(config.judge)
    if not hasattr(judge, "refuses"):
        raise RefusalLabError(f"optimize needs a phrase judge (markers or substring), not {config.judge!r}")
    RunDirectory(run_dir).bind(lm=lm, config=config.model_copy(update={k: None for k in UNTRACKED}))
    write_json(run_dir / "config.json", json.loads(config.model_dump_json()))
    data = prepare(lm, config, run_dir)
    harmful = dealt(data.harmful, config.contexts)
    parts = {c: (lm.in_context(c), harmful[c], []) for c in config.contexts}
    with ScorerSet(run_dir / "evaluation", parts, judge, config.max_new_tokens, config.generate_batch) as scorer:
        began = time.monotonic()
        baseline = scorer.score("baseline", None)
        timing = run_dir / "generation-seconds.json"
        if not timing.exists():
            write_json(timing, time.monotonic() - began)
        per_context = ", ".join(f"{c} {b['refusals']}/{b['n']}" for c, b in baseline.items())
        baseline_refusals = sum(b["refusals"] for b in baseline.values())
        log(f"baseline: {baseline_refusals}/{len(data.harmful)} validation refusals ({config.judge}; {per_context})")
        study = open_study(run_dir, config)
        if "refined" in config.sources and not study.trials:
            study.enqueue_trial(full_refined_trial(lm.n_layers))  # the refined direction as it was trained
        deadline = end = None
        per_generation = json.loads(timing.read_text())
        if config.time_budget_min is not None:  # the search gets what the survivors' generations leave, ≥ half
            end, now = start + 60 * config.time_budget_min, time.monotonic()
            deadline = now + max((end - now) / 2, end - now - 2 * config.survivors * per_generation)
        search(lm, data, study, config, deadline)
        table = trial_table(study)
        if table.empty:
            raise RefusalLabError("no trial finished; raise --trials or --time-budget")
        chosen = survivors(table, config,
                           None if end is None else max(2, int((end - time.monotonic()) // per_generation)))
        log(f"generating for up to {len(chosen)} of {len(table)} trials (the rest are dominated on first-token "
            "scores)")
        generated = generate_survivors(lm, data, scorer, chosen, end, per_generation)
    pareto = pareto_table(chosen, generated, data, config)
    if config.compliance_check.judge:
        pareto = judge_front(lm, run_dir, data, harmful, chosen, pareto, config, judge)
    write_csv(pareto, run_dir / "pareto.csv")
    write_json(run_dir / "search.json", {"baseline_refusals": baseline_refusals,
                                         "n": len(data.harmful), "baseline_contexts": baseline,
                                         "baseline_refusal_rate": refusal_rate(baseline, config.objective),
                                         "objective": config.objective, "trials": len(table),
                                         "generated": len(generated), "baseline_nll": data.base_nll,
                                         "seconds": time.monotonic() - start})
    return pareto


def judge_front(lm, run_dir: Path, data: SearchData, harmful: dict[str, list[str]], chosen: pd.DataFrame,
                pareto: pd.DataFrame, config: OptimizeConfig, phrase_judge) -> pd.DataFrame:
    """The llm judge beside the phrase judge (the search's) on the baseline and the judged Pareto trials
    (:mod:`~refusal_lab.pipeline.compliance`), written to ``RUN_DIR/compliance.csv`` and logged; ``pareto`` with
    their counts (:func:`~refusal_lab.pipeline.compliance.with_compliance`)."""
    check = config.compliance_check
    params = chosen.set_index("trial")["params"]
    edits = {t: data.ablation(lm, params[t]) for t in judged_trials(pareto, config.max_kl, check.trials)}
    log(f"judging the baseline and {len(edits)} Pareto trials by {check.judge} at {check.max_new_tokens} tokens")
    judged = judge_edits(lm, run_dir / "evaluation", harmful, edits, phrase_judge,
                         make_judge(check.judge, ablate_run=check.ablate), check.max_new_tokens,
                         config.generate_batch)
    write_csv(judged, run_dir / "compliance.csv")
    for trial, rows in judged.groupby("trial", sort=False):
        log(f"{'trial ' if trial != 'baseline' else ''}{trial}: {rows['refusals'].sum()}/{rows['n'].sum()} "
            f"refusals ({config.judge}), {rows['noncompliant'].sum()} judged non-compliant, of which "
            f"{rows['covert'].sum()} are not refusals by {config.judge} (covert); {rows['incoherent'].sum()} "
            "incoherent")
    return with_compliance(pareto, judged, config.objective)


def generate_survivors(lm, data: SearchData, scorer: ScorerSet, chosen: pd.DataFrame, end: float | None,
                       per_generation: float) -> dict[int, dict]:
    """trial → per-context validation refusals of the ``chosen`` trials, in their priority order; under a time budget
    (``end``, ``time.monotonic()``) none whose generations would end past it, but the first."""
    generated, longest = {}, per_generation
    for row in chosen.itertuples():
        if end is not None and generated and time.monotonic() + longest > end:
            break
        began = time.monotonic()
        generated[row.trial] = scorer.score(f"trial-{row.trial}", data.ablation(lm, row.params), trial=row.trial)
        release_freed_memory()
        longest = max(longest, time.monotonic() - began)
    return generated


def refusal_rate(per_context: dict[str, dict], objective: str) -> float:
    """The refusal rate over the contexts' ``{"refusals", "n"}``: the largest (``worst``) or the mean (``mean``)."""
    rates = torch.tensor([scored["refusals"] / scored["n"] for scored in per_context.values()], dtype=torch.float64)
    return float(aggregate(rates, objective, dim=0))


def pareto_table(chosen: pd.DataFrame, generated: dict[int, dict], data: SearchData,
                 config: OptimizeConfig) -> pd.DataFrame:
    """The generated trials' front on (``refusal_rate``, KL[, NLL]): per trial its refusals (all contexts), the
    aggregated rate, first-token p_R and KL, each context's figures (``refusals@<context>``, ``n@…``,
    ``p_refusal@…``, ``kl@…``) and every parameter."""
    chosen = chosen[chosen["trial"].isin(list(generated))]
    chosen = chosen.assign(refusals=[sum(s["refusals"] for s in generated[t].values()) for t in chosen["trial"]],
                           refusal_rate=[refusal_rate(generated[t], config.objective) for t in chosen["trial"]])
    rows = []
    for r in front(chosen, "refusal_rate", *data.objectives[1:]).itertuples():
        contexts = {f"{name}@{c}": value for c in config.contexts
                    for name, value in (("refusals", generated[r.trial][c]["refusals"]),
                                        ("n", generated[r.trial][c]["n"]),
                                        ("p_refusal", r.contexts.get(c, {}).get("p_refusal")),
                                        ("kl", r.contexts.get(c, {}).get("kl")))}
        rows.append({"trial": r.trial, "refusals": r.refusals, "n": len(data.harmful), "refusal_rate": r.refusal_rate,
                     "kl": r.kl, **({"nll": r.nll, "nll_change": r.nll - data.base_nll} if data.capability else {}),
                     "p_refusal": r.p_refusal, **contexts, **flatten(r.params)})
    return pd.DataFrame(rows)
