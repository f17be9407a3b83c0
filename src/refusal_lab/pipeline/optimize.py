"""``refusal-lab optimize``: a refusal × KL Pareto search over abliteration parameters (:mod:`.space`).

Data (:mod:`refusal_lab.pipeline.search_data`): class means of each training source's train prompts and the refined
direction. The scoring prompts are validation prompts: the ``mixed`` source's ``n_val`` harmful ones for the
survivors' generations (the first ``n_score`` of them for the first-token scores of every trial) and ``n_kl``
harmless ones of ``kl_source`` (default ``unmatched``: generic requests, the kind heretic's KL and the held-out
assessment use; ``mixed``: topic-matched and generic requests).

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
the one evaluator (:class:`~refusal_lab.pipeline.edit_scoring.EditScorer`; generations in
``RUN_DIR/evaluation/results.duckdb``); every other trial is dominated on the cheap objectives and is never
generated for. ``RUN_DIR/pareto.csv`` holds the survivors' Pareto front on (refusals, KL[, NLL]) with every
parameter (and ``nll_change``, the NLL's change from the unedited model's).
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
from refusal_lab.pipeline.judging import make_judge
from refusal_lab.interventions.batched import batched_scores
from refusal_lab.pipeline.edit_scoring import EditScorer
from refusal_lab.pipeline.rundir import RunDirectory
from refusal_lab.pipeline.search_data import OptimizeConfig, SearchData, capability_nll, prepare
from refusal_lab.search.edit import Abliteration
from refusal_lab.search.space import AbliterationParams, suggest

log = Console(stderr=True, width=None if sys.stderr.isatty() else 150).log
# settings a resumed search may change (the placement: where the model runs, not what it computes)
UNTRACKED = ("trials", "time_budget_min", "survivors", "device_map", "offload_folder")
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


def score_pass(lm, data: SearchData, ablations: list[Abliteration], config: OptimizeConfig) -> list[tuple[float, ...]]:
    """(mean first-token refusal probability on harmful, mean first-token KL on harmless[, capability NLL]) per
    ablation; the first two from one batched forward per ``rows_per_pass`` rows, the NLL one ablation at a time."""
    candidates = [a.interventions(dense=True, lm=lm) for a in ablations]
    scores, kl = batched_scores(lm, data.scored + data.harmless, candidates, data.base_logprobs, config.rows_per_pass)
    n = len(data.scored)
    values = [(float(torch.sigmoid(s[:n]).mean()), float(k[n:].mean())) for s, k in zip(scores, kl)]
    if data.capability:
        values = [v + (capability_nll(lm, data, a, config),) for v, a in zip(values, ablations)]
    release_freed_memory()  # each pass's activations, so that the next lands on the steady footprint
    return values


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
            values = score_pass(lm, data, [data.ablation(lm, p) for p in params], config)
            for trial, p, value in zip(trials, params, values):
                trial.set_user_attr("params", json.loads(p.model_dump_json()))
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
             "nll": t.values[2] if len(t.values) > 2 else float("nan"), "params": trial_params(t)}
            for t in study.get_trials(states=[optuna.trial.TrialState.COMPLETE])]
    return pd.DataFrame(rows, columns=["trial", "p_refusal", "kl", "nll", "params"])


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
    with EditScorer(lm, run_dir / "evaluation", data.harmful, [], judge, config.max_new_tokens,
                    config.generate_batch) as scorer:
        began = time.monotonic()
        baseline = scorer.score("baseline", None)["refusals"]
        timing = run_dir / "generation-seconds.json"
        if not timing.exists():
            write_json(timing, time.monotonic() - began)
        log(f"baseline: {baseline}/{len(data.harmful)} validation refusals ({config.judge})")
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
        refusals, longest = {}, per_generation
        for row in chosen.itertuples():  # in priority order; under a budget none that would end past it (but the 1st)
            if end is not None and refusals and time.monotonic() + longest > end:
                break
            began = time.monotonic()
            refusals[row.trial] = scorer.score(f"trial-{row.trial}", data.ablation(lm, row.params),
                                               trial=row.trial)["refusals"]
            release_freed_memory()
            longest = max(longest, time.monotonic() - began)
    chosen = chosen[chosen["trial"].isin(list(refusals))].assign(refusals=lambda f: f["trial"].map(refusals))
    result = front(chosen, "refusals", *data.objectives[1:])
    rows = [{"trial": r.trial, "refusals": r.refusals, "n": len(data.harmful), "kl": r.kl,
             **({"nll": r.nll, "nll_change": r.nll - data.base_nll} if data.capability else {}),
             "p_refusal": r.p_refusal, **flatten(r.params)} for r in result.itertuples()]
    pareto = pd.DataFrame(rows)
    write_csv(pareto, run_dir / "pareto.csv")
    write_json(run_dir / "search.json", {"baseline_refusals": baseline, "n": len(data.harmful),
                                         "trials": len(table), "generated": len(chosen), "baseline_nll": data.base_nll,
                                         "seconds": time.monotonic() - start})
    return pareto
