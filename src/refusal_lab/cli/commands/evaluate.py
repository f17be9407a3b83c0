"""``refusal-lab evaluate``: the model and a run's interventions on every metric, each as Δ vs the baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from refusal_lab.cli.common import load, require_run_dir, run_config
from refusal_lab.cli.options import ConfigOption, DeviceMapOption, EvalSet, OffloadFolderOption, out_dir_option
from refusal_lab.cli.tables import print_table
from refusal_lab.core.config import load_config_file
from refusal_lab.data import Splits, dataset_splits
from refusal_lab.pipeline.evaluate import EvaluateConfig, summary_frame
from refusal_lab.pipeline.evaluate import evaluate as evaluate_job


def evaluate(
    out: Annotated[Path, typer.Option(help="results directory (DuckDB, Parquet, summary.json; resumable)",
                                      callback=out_dir_option)],
    run_dir: Annotated[Optional[Path], typer.Option("--run", help="run directory whose interventions to score")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="default: the run's, else the bundled "
                                                 "default")] = None,
    intervention: Annotated[Optional[list[str]], typer.Option(help="repeatable; names or patterns, e.g. "
                                                              "'ablate[all]', 'actadd*'")] = None,
    metrics: Annotated[Optional[str], typer.Option(help="comma-separated: refusal,harmless_refusal,unsafe,"
                                                   "coherence,perplexity,mmlu,arc,kl,repetition; optional kl_response")] = None,
    judge: Annotated[Optional[list[str]], typer.Option(help="repeatable: substring, llm or llm:<model>")] = None,
    judge_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible endpoint for the llm judge (key from "
                                                     "$REFUSAL_LAB_JUDGE_KEY)")] = None,
    judge_model: Annotated[Optional[str], typer.Option(help="the llm judge's model")] = None,
    judge_ablate: Annotated[Optional[str], typer.Option(help="the llm judge grades with its own refusal direction "
                                                        "ablated: auto (default; extracted once, cached), a run "
                                                        "directory of the judge model, or none")] = None,
    guard: Annotated[Optional[str], typer.Option(help="Llama-Guard-style classifier for the unsafe metric "
                                                 "(preferred over the llm judge)")] = None,
    config: ConfigOption = None,
    n_eval: Annotated[Optional[int], typer.Option(min=1, help="held-out prompts per side")] = None,
    eval_set: Annotated[Optional[EvalSet], typer.Option(help="generic (default) / advbench: held-out AdvBench; "
                                                                       "harmbench: HarmBench behaviours; test: the "
                                                                       "run's test split")] = None,
    control_seeds: Annotated[Optional[int], typer.Option(min=0, help="random controls per intervention")] = None,
    full: Annotated[bool, typer.Option(help="full MMLU and ARC instead of seeded subsets")] = False,
    capability_scorer: Annotated[Optional[str], typer.Option(help="mmlu/arc scorer: builtin (default) or lm-eval "
                                                             "(EleutherAI's harness on the same offline questions; "
                                                             "pip install 'refusal-lab[lm-eval]')")] = None,
    backend: Annotated[Optional[str], typer.Option(help="generation: hf (transformers, default) or vllm (the "
                                                   "conditions that bake into weights; pip install "
                                                   "'refusal-lab[vllm]')")] = None,
    tensor_parallel_size: Annotated[Optional[int], typer.Option(min=1, help="vLLM's tensor_parallel_size")] = None,
    device_map: DeviceMapOption = None,
    offload_folder: OffloadFolderOption = None,
):
    """Score the model and the run's interventions on every metric, each as Δ vs the baseline with intervals."""
    cfg = load_config_file(config, EvaluateConfig, section="evaluate", metrics=metrics.split(",") if metrics else None,
                           judges=judge, judge_url=judge_url, judge_model=judge_model, judge_ablate=judge_ablate,
                           guard=guard,
                           interventions=intervention, n_eval=n_eval, eval_set=eval_set.value if eval_set else None,
                           control_seeds=control_seeds, full_benchmarks=full or None,
                           capability_scorer=capability_scorer, backend=backend,
                           tensor_parallel_size=tensor_parallel_size)
    if run_dir is not None:
        require_run_dir(run_dir)
    run_cfg = run_config(None, run_dir, model=model, device_map=device_map, offload_folder=offload_folder)
    splits = (Splits.load(run_dir / "splits.json") if run_dir else
              dataset_splits(run_cfg.data, n_train=run_cfg.n_train, n_val=run_cfg.n_val, seed=run_cfg.seed))
    rows = evaluate_job(lambda: load(run_cfg), cfg, out, run_dir, run_cfg, splits)  # loads after the held-out rule
    print_table(summary_frame(rows), f"evaluation → {out}")
