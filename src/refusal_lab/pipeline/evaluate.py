"""``refusal-lab evaluate``: score a model and a run's interventions with the whole suite into a results directory.

    RESULTS_DIR/results.duckdb   per-item values, generations, result rows (:mod:`refusal_lab.evaluation.store`)
    RESULTS_DIR/results.parquet  the result rows
    RESULTS_DIR/items.parquet    the per-item values behind them (paired comparisons between interventions)
    RESULTS_DIR/summary.json     settings, prompt counts, and per (intervention, metric, judge, dataset, length): value,
                                 interval, baseline, Δ and whether the random controls match it

Conditions: the baseline, and with a run directory the interventions the comparison would build
(:func:`refusal_lab.pipeline.conditions.plan_conditions`), filtered by ``interventions`` (shell patterns on their names,
e.g. ``ablate[all]``, ``actadd*``), each with ``control_seeds`` random controls. Prompts: the run's test split or the
fixed generic held-out sets, checked against every prompt extraction, selection or a search saw.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Literal

from pydantic import NonNegativeInt, PositiveInt, field_validator

from refusal_lab.core.config import ConfigModel
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.io import json_safe, write_json
from refusal_lab.core.vocabulary import Kind, Scope
from refusal_lab.pipeline.judging import make_judge
from refusal_lab.evaluation.multiple_choice import load_arc, load_mmlu
from refusal_lab.evaluation.store import ResultsStore
from refusal_lab.evaluation.condition import Condition
from refusal_lab.evaluation.suite import Suite
from refusal_lab.evaluation.vllm_backend import VllmGenerator
from refusal_lab.evaluation.texts import CORPORA, load_texts
from refusal_lab.pipeline.artifacts import ranked_layers
from refusal_lab.pipeline.conditions import PlanConfig, plan_conditions
from refusal_lab.pipeline.heldout import eval_prompts
from refusal_lab.pipeline.extraction import fit_context

METRICS = ("refusal", "harmless_refusal", "unsafe", "coherence", "perplexity", "mmlu", "arc", "kl", "repetition")
# on request: full-response KL (a second forward per condition) and the first-token refusal rates (no generation)
OPTIONAL_METRICS = ("kl_response", "first_token_refusal", "first_token_harmless_refusal")


class EvaluateConfig(ConfigModel):
    """What ``refusal-lab evaluate`` scores (defaults: every metric, both judges, 24 and 128 tokens)."""

    metrics: list[Literal[METRICS + OPTIONAL_METRICS]] = list(METRICS)  # type: ignore[valid-type]

    @field_validator("metrics", mode="before")
    @classmethod
    def _renamed(cls, metrics):
        """The ``judge`` metric is now ``unsafe`` (same rule): an old config says so in one line."""
        if isinstance(metrics, list) and "judge" in metrics:
            raise ValueError('the metric "judge" is now "unsafe" (the same rule, docs/evaluation.md); rename it in '
                             "[evaluate] metrics")
        return metrics
    judges: list[str] = ["substring", "llm"]  # judge specs (refusal_lab.evaluation.judges.make_judge)
    judge_url: str | None = None  # OpenAI-compatible endpoint for the llm judge
    judge_model: str | None = None  # local model or endpoint model name for the llm judge
    # the llm judge grades with its own refusal direction ablated: "auto" (its default extraction, made once and
    # cached), a run directory of the judge model, or "none"
    judge_ablate: str = "auto"
    guard: str | None = None  # Llama-Guard-style classifier (HF id or directory): the unsafe metric's judge
    # the interventions (shell patterns on their names; their random controls follow them) the llm judge grades;
    # the baseline always. The others are judged by the cheap judges only: the llm judge is the evaluation's cost
    llm_judged: list[str] = ["*"]
    lengths: list[PositiveInt] = [24, 128]
    eval_set: Literal["test", "generic", "advbench", "harmbench"] = "generic"  # heldout.EVAL_SETS
    n_eval: PositiveInt | None = 100
    # prompts per side that the metrics reading greedy responses score (refusal, judge, coherence, repetition,
    # instruction perplexity, kl_response): the first n_generate of the n_eval; None: all. The no-generation
    # measures (first-token rates, KL, landing) use every one — the cheap way to power a finding.
    n_generate: PositiveInt | None = None
    interventions: list[str] = ["ablate[all]", "actadd[layer,*]"]
    kinds: list[Kind] = ["ablate", "actadd"]
    scopes: list[Scope] = ["all"]
    control_seeds: NonNegativeInt = 3
    mmlu_n: PositiveInt = 500
    mmlu_subjects: list[str] | None = None  # None: stratified over all 57 (one subject shares one 5-shot prefix)
    arc_n: PositiveInt = 300
    full_benchmarks: bool = False
    # mmlu / arc scored by the built-in scorer or by EleutherAI's lm-evaluation-harness on the same questions
    # (refusal_lab.evaluation.harness; pip install 'refusal-lab[lm-eval]')
    capability_scorer: Literal["builtin", "lm-eval"] = "builtin"
    text_docs: PositiveInt = 64  # documents per general-text set (lambada, boolq, prose)
    text_sets: list[Literal["lambada", "boolq", "speeches"]] | None = None  # perplexity sets (None: all)
    batch_size: PositiveInt = 16
    # greedy generation through transformers (hf) or vLLM (vllm: the conditions that bake into weights; the others
    # stay on transformers, said per condition; refusal_lab.evaluation.vllm_backend)
    backend: Literal["hf", "vllm"] = "hf"
    tensor_parallel_size: PositiveInt = 1  # vLLM's, passed through
    seed: int = 0


def conditions_from_run(lm, run_dir: Path, config: EvaluateConfig, run_config, splits, plan=None,
                        fits=None) -> list[Condition]:
    """The baseline, then the run's interventions (and their controls) whose names match ``config.interventions``:
    those of ``plan`` (a :class:`~refusal_lab.pipeline.conditions.PlanConfig`; default: ``config.kinds`` at
    ``config.scopes``, ActAdd at one layer, ``config.control_seeds`` controls). ``fits``: the run's
    :class:`~refusal_lab.methods.registry.FitContext` where the caller has it (else loaded when the plan needs one)."""
    plan = plan or PlanConfig(kinds=config.kinds, scopes=config.scopes, actadd_scopes=["layer"], sweep_max_k=0,
                                 center_variants=False, control_seeds=config.control_seeds)
    ranked = ranked_layers(run_dir)
    needs_fits = "leace" in plan.kinds or plan.center_variants
    fits = (fits or fit_context(lm, splits, run_config)) if needs_fits else None
    conditions, skipped = plan_conditions(run_dir, plan, lm.n_layers, lm.hidden_size, ranked, fits)
    if skipped:
        raise RefusalLabError(f"cannot build every requested kind: {'; '.join(skipped)}")
    chosen = {c.name for c in conditions[1:] if not c.control and _matches(c.name, config.interventions)}
    if not chosen:
        names = ", ".join(c.name for c in conditions[1:] if not c.control)
        raise RefusalLabError(f"no intervention matches {config.interventions}; the run offers: {names}")
    return [conditions[0]] + [c for c in conditions[1:] if c.name in chosen or (c.control and c.control_for in chosen)]


def _matches(name: str, patterns: list[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p.replace("[", "[[]")) for p in patterns)


def _spec(config: EvaluateConfig, spec: str) -> str:
    return f"llm:{config.judge_model}" if spec == "llm" and config.judge_model else spec


def judge_name(config: EvaluateConfig, spec: str) -> str:
    """The name the results store gives the judge ``spec`` configures (``llm`` → ``llm:<model>[-ablated]``)."""
    return make_judge(_spec(config, spec), url=config.judge_url, ablate_run=config.judge_ablate).name


def _judges(config: EvaluateConfig) -> list:
    specs = [_spec(config, spec) for spec in config.judges]
    if any(spec.startswith("llm") for spec in specs) and config.judge_ablate == "none":
        from rich.console import Console

        Console(stderr=True).print("note: with --judge-ablate none the safety-tuned llm judge grades harmful "
                                   "compliance as refusal (docs/evaluation.md, 'Judges against human labels'); "
                                   "read bypass "
                                   "rates from the substring judge", soft_wrap=True, highlight=False)
    return [make_judge(spec, url=config.judge_url, ablate_run=config.judge_ablate) for spec in specs]


def _capability_data(config: EvaluateConfig) -> tuple[dict, dict]:
    texts, questions = {}, {}
    if "perplexity" in config.metrics:
        texts = {corpus: load_texts(corpus, config.text_docs, config.seed)[1]
                 for corpus in (config.text_sets or CORPORA)}
    if "mmlu" in config.metrics or "arc" in config.metrics:
        if "mmlu" in config.metrics:
            questions["mmlu"] = load_mmlu(n=config.mmlu_n, seed=config.seed, full=config.full_benchmarks,
                                          subjects=config.mmlu_subjects)
        if "arc" in config.metrics:
            questions["arc"] = load_arc(n=config.arc_n, seed=config.seed, full=config.full_benchmarks)
    return texts, questions


def evaluate(lm, config: EvaluateConfig, out: str | Path, run_dir: str | Path | None = None,
             run_config=None, splits=None, plan=None, fits=None) -> list[dict]:
    """Score the baseline (and the run's matching interventions, planned by ``plan`` as in
    :func:`conditions_from_run`) on every configured metric into ``out``. ``lm``: a loaded model, or a function that
    loads it — called only after the held-out rule passed, so a violation fails before minutes of loading."""
    run_dir = Path(run_dir) if run_dir is not None else None
    vllm = VllmGenerator(config.tensor_parallel_size) if config.backend == "vllm" else None  # fails fast without it
    if splits is None:
        raise RefusalLabError("evaluate needs the splits whose train/val prompts count as seen")
    harmful, harmless = eval_prompts(splits, config.eval_set, config.n_eval, run_dir)
    lm = lm() if callable(lm) else lm
    conditions = (conditions_from_run(lm, run_dir, config, run_config, splits, plan, fits) if run_dir
                  else [Condition("baseline")])
    guard = None
    if config.guard and "unsafe" in config.metrics:
        guard = make_judge(f"guard:{config.guard}")
    texts, questions = _capability_data(config)
    store = ResultsStore(out)
    try:
        suite = Suite(lm, store, harmful, harmless, metrics=config.metrics, judges=_judges(config),
                      lengths=config.lengths, texts=texts, questions=questions, guard=guard,
                      batch_size=config.batch_size, capability_scorer=config.capability_scorer,
                      n_generate=config.n_generate,
                      llm_judged=lambda c: _matches(c.control_for if c.control else c.name, config.llm_judged),
                      generator=vllm.generate_ids if vllm else None)
        rows, items = suite.run(conditions)
        store.export()
        items.to_parquet(Path(out) / "items.parquet")
    finally:
        store.close()
        if vllm is not None:
            vllm.close()
    write_json(Path(out) / "summary.json", {
        "model": lm.name, "run": str(run_dir) if run_dir else None, "config": config.model_dump(),
        "n_harmful": len(harmful), "n_harmless": len(harmless),
        "n_generated": min(config.n_generate or len(harmful), len(harmful)),
        "rows": [json_safe({k: v for k, v in row.items()
                            if k not in ("unit", "model_fingerprint", "intervention_hash", "data_hash")})
                 for row in rows if not row["control"]]})
    return rows


def summary_frame(rows: list[dict]):
    """The non-control rows as a printable table: value [interval], baseline, Δ [interval], specific."""
    import pandas as pd

    def interval(row, prefix):
        value = row[prefix.rstrip("_") or "value"]
        low, high = row[f"{prefix}ci_low"], row[f"{prefix}ci_high"]
        return "" if value is None else f"{value:.3f} [{low:.3f}, {high:.3f}]"

    return pd.DataFrame([{
        "intervention": r["intervention"], "metric": r["metric"], "judge/set": r["judge"] or r["dataset"],
        "tokens": r["max_new_tokens"] or "", "n": r["n"], "value": interval(r, ""),
        "baseline": f"{r['baseline']:.3f}" if r["baseline"] is not None else "", "Δ": interval(r, "delta_"),
        "specific": {True: "yes", False: "no"}.get(r.get("specific"), "")} for r in rows if not r["control"]])
