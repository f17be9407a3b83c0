"""``refusal-lab optimize``: a refusal × KL Pareto search over abliteration parameters (:mod:`.space`).

Data (train / validation only; the held-out AdvBench and generic slices are never touched): class means of
``resid_pre`` at every layer and post-instruction position from the train split of each training source
(``mixed``, ``unmatched``, ``matched``), minus any scoring prompt; and the ``refined`` source's direction: the
``mixed`` DiM direction refined by a few gradient steps on the ``mixed`` train prompts (:mod:`.refine`; cached in
``RUN_DIR/refined.safetensors``, its steps in ``RUN_DIR/refine.json``). The scoring prompts are validation
prompts: the ``mixed`` source's ``n_val`` harmful ones for the survivors' generations (the first ``n_score`` of them
for the first-token scores of every trial) and ``n_kl`` harmless ones of ``kl_source`` (default ``unmatched``:
generic requests, the kind heretic's KL and the held-out assessment use; ``mixed``: topic-matched and generic
requests). Every prompt used is recorded in ``RUN_DIR/seen/optimize.json``.

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
(``max_new_tokens``) on the harmful validation prompts, judged by ``judge`` (default heretic's markers); every
other trial is dominated on the cheap objectives and is never generated for. ``RUN_DIR/pareto.csv`` holds the
survivors' Pareto front on (refusals, KL[, NLL]) with every parameter (and ``nll_change``, the NLL's change from the
unedited model's).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from pydantic import Field, PositiveInt
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import save_file

from refusal_lab.core.config import ConfigModel
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.io import atomic_path, write_csv, write_json, write_jsonl
from refusal_lab.core.memory import release_freed_memory
from refusal_lab.data import dataset_splits
from refusal_lab.evaluation.generate import generate
from refusal_lab.pipeline.judging import make_judge
from refusal_lab.evaluation.perplexity import text_losses
from refusal_lab.evaluation.texts import load_texts
from refusal_lab.interventions.batched import batched_scores
from refusal_lab.interventions.scoring import last_token_logprobs
from refusal_lab.models.activations import collect_activations
from refusal_lab.models.bundled import DEFAULT_MODEL
from refusal_lab.pipeline.heldout import record_seen
from refusal_lab.pipeline.rundir import RunDirectory
from refusal_lab.search.edit import Abliteration
from refusal_lab.search.refine import RefineSettings, refine_direction
from refusal_lab.search.space import AbliterationParams, interpolated_direction, suggest

log = Console(stderr=True, width=None if sys.stderr.isatty() else 150).log
TrainingSource = Literal["mixed", "unmatched", "matched"]
Source = Literal["mixed", "unmatched", "matched", "refined"]
UNTRACKED = ("trials", "time_budget_min", "survivors")  # settings a resumed search may change
STUDY = "abliteration"  # the study's name in RUN_DIR/optuna.journal


class OptimizeConfig(ConfigModel):
    """Settings of one search (saved as RUN_DIR/config.json; see the module docstring)."""

    model: str = DEFAULT_MODEL
    dtype: str = "auto"
    seed: int = 0
    sources: list[Source] = ["mixed", "unmatched", "matched", "refined"]
    n_train: int = Field(128, ge=2)
    n_val: int = Field(64, ge=2)  # harmful validation prompts the survivors generate for (refusals)
    n_score: int = Field(64, ge=2)  # of those, scored by first token in every trial
    n_kl: int = Field(32, ge=2)  # harmless validation prompts scored in every trial (KL)
    kl_source: TrainingSource = "unmatched"  # whose harmless validation prompts KL is measured on (generic only)
    trials: PositiveInt = 160
    startup_trials: int = Field(32, ge=0)
    trials_per_pass: PositiveInt = 4
    rows_per_pass: PositiveInt = 32  # batch rows per scoring forward (trials × prompts) and per activation batch
    generate_batch: PositiveInt = 32  # prompts per greedy-generation batch
    max_kl: float = Field(0.1, gt=0)
    survivors: PositiveInt = 8
    max_new_tokens: PositiveInt = 24
    judge: str = "markers"
    norm_preserving: list[bool] = Field([False], min_length=1)  # edits searched: plain, norm-preserving or both
    capability_texts: int = Field(0, ge=0)  # > 0: a third objective, NLL on this many texts of capability_corpus
    capability_corpus: str = "lambada"
    capability_window: int = Field(128, ge=2)  # tokens per scored window of a text (disjoint windows)
    time_budget_min: float | None = Field(None, gt=0)
    refine: RefineSettings = RefineSettings()

    @property
    def training_sources(self) -> list[str]:
        """The sources whose class means the search needs (``refined`` starts from ``mixed``'s)."""
        wanted = {s for s in self.sources if s != "refined"} | ({"mixed"} if "refined" in self.sources else set())
        return [s for s in ("mixed", "unmatched", "matched") if s in wanted]


@dataclass
class SearchData:
    """Validation prompts, the baseline next-token log-probs of those scored in every trial
    (``scored + harmless``), each training source's class means ``[L, P, d]`` and the refined direction ``[d]``."""

    harmful: list[str]
    scored: list[str]
    harmless: list[str]
    base_logprobs: torch.Tensor
    means: dict[str, tuple[torch.Tensor, torch.Tensor]]
    data_hash: str
    refined: torch.Tensor | None = None
    capability: list[str] | None = None  # texts of the capability objective (None: two objectives)
    base_nll: float | None = None  # the unedited model's NLL on them (nats per token)

    @property
    def objectives(self) -> list[str]:
        return ["p_refusal", "kl"] + (["nll"] if self.capability else [])

    def table(self, source: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``source``'s direction table ``[L, P, d]`` and the harmless means ``[L, P, d]`` its directions are
        orthogonalised against: ``μ⁺ − μ⁻`` and ``μ⁻`` of a training source; the refined direction at every entry
        and ``mixed``'s ``μ⁻``."""
        if source == "refined":
            if self.refined is None:
                raise RefusalLabError("this search has no refined direction (refine.json); rerun optimize with "
                                      "'refined' in sources")
            harmless = self.means["mixed"][1]
            return self.refined.to(harmless.dtype).expand_as(harmless), harmless
        harmful, harmless = self.means[source]
        return harmful - harmless, harmless

    def ablation(self, lm, params: AbliterationParams, **meta) -> Abliteration:
        return Abliteration.from_params(params, *self.table(params.source), lm.n_layers, model=lm.name,
                                        data_hash=self.data_hash, **meta)


def search_prompts(config: OptimizeConfig) -> tuple[list[str], list[str], dict[str, tuple[list[str], list[str]]]]:
    """The ``mixed`` source's harmful validation prompts, the ``kl_source``'s harmless validation prompts, and each
    source's train prompts (harmful, harmless) without any of those validation texts."""
    splits = {source: dataset_splits(source, n_train=config.n_train, n_val=config.n_val, seed=config.seed)
              for source in {*config.training_sources, "mixed", config.kl_source}}
    harmful, harmless = splits["mixed"].val_harmful.texts, splits[config.kl_source].val_harmless.texts
    validation = set(harmful) | set(harmless)
    train = {source: ([t for t in splits[source].train_harmful.texts if t not in validation],
                      [t for t in splits[source].train_harmless.texts if t not in validation])
             for source in config.training_sources}
    return harmful, harmless, train


def load_means(run_dir: Path, sources: list[str]) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], str] | None:
    """The class means ``RUN_DIR/means.safetensors`` holds per source and the data hash they were made from (in the
    file's metadata); None when there are none (or none for some source)."""
    from safetensors import safe_open

    path = run_dir / "means.safetensors"
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as stored:
        data_hash, names = (stored.metadata() or {}).get("data_hash"), set(stored.keys())
        if data_hash is None or not {f"{s}.{side}" for s in sources for side in ("harmful", "harmless")} <= names:
            return None
        means = {s: (stored.get_tensor(f"{s}.harmful"), stored.get_tensor(f"{s}.harmless")) for s in sources}
    return means, data_hash


def prepare(lm, config: OptimizeConfig, run_dir: Path) -> SearchData:
    """Splits, class means (cached in ``RUN_DIR/means.safetensors``) and baseline log-probs for the search."""
    import hashlib

    harmful, all_harmless, train = search_prompts(config)
    harmless = all_harmless[: config.n_kl]
    payload = json.dumps({"harmful": harmful, "harmless": harmless, "train": train}, sort_keys=True)
    data_hash = hashlib.sha256(payload.encode()).hexdigest()[:16]
    record_seen(run_dir, "optimize", [*harmful, *all_harmless,
                                      *(t for pair in train.values() for side in pair for t in side)])
    stored = load_means(run_dir, config.training_sources)
    if stored is None or stored[1] != data_hash:
        tensors = {}
        for source, (harm, safe) in train.items():
            log(f"class means of {source} ({len(harm)} + {len(safe)} train prompts)")
            tensors[f"{source}.harmful"] = collect_activations(lm, harm, config.rows_per_pass).mean.float()
            tensors[f"{source}.harmless"] = collect_activations(lm, safe, config.rows_per_pass).mean.float()
            release_freed_memory()
        with atomic_path(run_dir / "means.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"data_hash": data_hash})
        stored = load_means(run_dir, config.training_sources)
    refined = refined_direction(lm, config, run_dir, train.get("mixed"), stored[0].get("mixed"), data_hash)
    scored_harmful = harmful[: config.n_score]
    base = last_token_logprobs(lm, scored_harmful + harmless, batch_size=config.rows_per_pass)
    data = SearchData(harmful, scored_harmful, harmless, base, stored[0], data_hash, refined)
    if config.capability_texts:
        data.capability = load_texts(config.capability_corpus, config.capability_texts, config.seed)[1]
        data.base_nll = capability_nll(lm, data, None, config)
    release_freed_memory()
    return data


def capability_nll(lm, data: SearchData, ablation: Abliteration | None, config: OptimizeConfig) -> float:
    """Token-averaged NLL (nats) of the capability texts under ``ablation`` (None: unedited): raw text in disjoint
    windows of ``capability_window`` tokens (:func:`refusal_lab.evaluation.perplexity.text_losses`)."""
    interventions = ablation.interventions(lm=lm) if ablation is not None else []
    return text_losses(lm, data.capability, interventions=interventions, window=config.capability_window,
                       stride=config.capability_window, batch_size=config.rows_per_pass).mean_nll


def _refine_key(config: OptimizeConfig, data_hash: str) -> str:
    return json.dumps({"data_hash": data_hash, "seed": config.seed, **config.refine.model_dump()}, sort_keys=True)


def load_refined(run_dir: Path, config: OptimizeConfig, data_hash: str) -> torch.Tensor | None:
    """The refined direction ``[d]`` stored in ``RUN_DIR/refined.safetensors`` for these data and settings, or None."""
    from safetensors import safe_open

    path = run_dir / "refined.safetensors"
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as stored:
        if (stored.metadata() or {}).get("key") != _refine_key(config, data_hash):
            return None
        return stored.get_tensor("direction")


def refined_direction(lm, config: OptimizeConfig, run_dir: Path, train: tuple[list[str], list[str]],
                      mixed_means: tuple[torch.Tensor, torch.Tensor], data_hash: str) -> torch.Tensor | None:
    """The ``refined`` source's direction (None when it is not searched): the ``mixed`` DiM direction at the last
    post-instruction position and ``refine.init_depth`` of the depth, refined on the ``mixed`` train prompts
    (:func:`~refusal_lab.search.refine.refine_direction`); stored once per data and settings."""
    if "refined" not in config.sources:
        return None
    stored = load_refined(run_dir, config, data_hash)
    if stored is not None:
        return stored
    harmful_means, harmless_means = mixed_means
    v = (harmful_means[:, -1] - harmless_means[:, -1]).double()
    init = interpolated_direction(v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12),
                                  config.refine.init_depth * (v.shape[0] - 1)).float()
    log(f"refining the mixed DiM direction ({config.refine.steps} gradient steps on {len(train[0])} + "
        f"{len(train[1])} train prompts)")
    direction, history = refine_direction(lm, init, *train, config.refine, seed=config.seed, log=log)
    write_json(run_dir / "refine.json", {"settings": config.refine.model_dump(), "steps": history})
    with atomic_path(run_dir / "refined.safetensors") as tmp:
        save_file({"direction": direction.contiguous(), "init": init.contiguous()}, str(tmp),
                  metadata={"key": _refine_key(config, data_hash)})
    return direction


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


def generated_refusals(lm, data: SearchData, ablation: Abliteration | None, path: Path, config: OptimizeConfig,
                       judge) -> int:
    """Refusals among greedy completions of the harmful scoring prompts (cached as JSONL at ``path``)."""
    if path.exists():
        return sum(json.loads(line)["refused"] for line in path.read_text().splitlines())
    interventions = ablation.interventions(lm=lm) if ablation is not None else []
    completions = generate(lm, data.harmful, interventions, config.max_new_tokens, config.generate_batch,
                           description=path.stem)
    release_freed_memory()
    refused = [judge.refuses(c) for c in completions]
    write_jsonl(path, ({"prompt": p, "response": c, "refused": r} for p, c, r in zip(data.harmful, completions,
                                                                                     refused)))
    return sum(refused)


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
    generations = run_dir / "generations"
    began = time.monotonic()
    baseline = generated_refusals(lm, data, None, generations / "baseline.jsonl", config, judge)
    timing = run_dir / "generation-seconds.json"
    if not timing.exists():
        write_json(timing, time.monotonic() - began)
    log(f"baseline: {baseline}/{len(data.harmful)} validation refusals ({config.judge})")
    study = open_study(run_dir, config)
    if "refined" in config.sources and not study.trials:
        study.enqueue_trial(full_refined_trial(lm.n_layers))  # the refined direction as it was trained
    deadline = end = None
    per_generation = json.loads(timing.read_text())
    if config.time_budget_min is not None:  # the search gets what the survivors' generations leave, ≥ half the rest
        end, now = start + 60 * config.time_budget_min, time.monotonic()
        deadline = now + max((end - now) / 2, end - now - 2 * config.survivors * per_generation)
    search(lm, data, study, config, deadline)
    table = trial_table(study)
    if table.empty:
        raise RefusalLabError("no trial finished; raise --trials or --time-budget")
    chosen = survivors(table, config, None if end is None else max(2, int((end - time.monotonic()) // per_generation)))
    log(f"generating for up to {len(chosen)} of {len(table)} trials (the rest are dominated on first-token scores)")
    refusals, longest = {}, per_generation
    for row in chosen.itertuples():  # in priority order; under a budget, none that would end past it (but the first)
        if end is not None and refusals and time.monotonic() + longest > end:
            break
        began = time.monotonic()
        refusals[row.trial] = generated_refusals(lm, data, data.ablation(lm, row.params),
                                                 generations / f"trial-{row.trial}.jsonl", config, judge)
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
