"""``refusal-lab optimize`` and ``refusal-lab abliterate``: search for a weight edit, and bake one into the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from refusal_lab.cli.common import load, run_config
from refusal_lab.cli.options import DeviceMapOption, OffloadFolderOption, out_dir_option
from refusal_lab.cli.tables import console, print_table
from refusal_lab.core.config import load_config_file
from refusal_lab.core.io import write_csv
from refusal_lab.pipeline.apply import abliterate as abliterate_job
from refusal_lab.pipeline.assess import assess_front, judge_heldout
from refusal_lab.pipeline.export import choose_trial, export_trial
from refusal_lab.pipeline.optimize import OptimizeConfig
from refusal_lab.pipeline.optimize import optimize as optimize_job
from refusal_lab.pipeline.trial_capability import trial_capability


def abliterate(run_dir: Annotated[Path, typer.Option("--run", help="run directory (extract or optimize)")],
               out: Annotated[Path, typer.Option(help="output model directory", callback=out_dir_option)],
               model: Annotated[Optional[str], typer.Option("--model", "-m", help="default: the run's")] = None,
               kind: Annotated[str, typer.Option(help="extract runs: ablate, nullspace, rank-k or subspace")] = "ablate",
               trial: Annotated[Optional[int], typer.Option(help="optimize runs: this trial (default: of the "
                                                            "Pareto trials within --max-kl, the one the llm judge "
                                                            "found least often non-compliant in its worst context; "
                                                            "unjudged runs: the lowest worst-context refusal "
                                                            "rate)")] = None,
               max_kl: Annotated[float, typer.Option(help="optimize runs: the KL bound for the default trial")] = 0.1,
               lora: Annotated[bool, typer.Option(help="optimize runs: also write the edit as a PEFT LoRA adapter "
                                                  "(OUT/lora)")] = False,
               dtype: Annotated[str, typer.Option(help="weights' dtype: auto (bf16 where the CPU is fast at it), "
                                                "float32, bfloat16 or float16")] = "auto",
               device_map: DeviceMapOption = None, offload_folder: OffloadFolderOption = None):
    """Bake a run's edit into the weights and save a plain transformers model directory: an extract run's
    projection at every layer, or one trial of an optimize run (with reproduce.json)."""
    if (run_dir / "optuna.journal").exists():
        cfg = load_config_file(run_dir / "config.json", OptimizeConfig, model=model, device_map=device_map,
                               offload_folder=offload_folder)
        written = export_trial(load(cfg, dtype), run_dir, out, trial, max_kl, lora)
    else:
        cfg = run_config(None, run_dir, model=model, device_map=device_map, offload_folder=offload_folder)
        written = abliterate_job(load(cfg, dtype), run_dir, out, kind)
    console.print(f"abliterated model written to {written}")


def optimize(
    out: Annotated[Path, typer.Option(help="run directory (resumable: rerun to continue)", callback=out_dir_option)],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="bundled name, HF id, directory or .gguf "
                                                 "(default: the bundled 0.5B)")] = None,
    trials: Annotated[Optional[int], typer.Option(help="trials to complete (default 160)")] = None,
    max_kl: Annotated[Optional[float], typer.Option(help="KL bound for the survivors (default 0.1)")] = None,
    time_budget: Annotated[Optional[float], typer.Option(help="minutes; stop asking trials in time to finish")] = None,
    config: Annotated[Optional[Path], typer.Option(help="OptimizeConfig as .toml or .json ([optimize] table)")] = None,
    heldout: Annotated[int, typer.Option(help="also score the front on this many held-out requests per side, "
                                         "under every chat context and on AdvBench and HarmBench "
                                         "(RUN_DIR/heldout.csv, heldout-contexts.csv; 0: skip)")] = 100,
    heldout_judged: Annotated[int, typer.Option(help="also judge the exported trial and the baseline on this many "
                                                "held-out requests per chat context and request set with the llm "
                                                "judge, at its length (RUN_DIR/heldout-compliance.csv; 0: skip)")] = 0,
    device_map: DeviceMapOption = None,
    offload_folder: OffloadFolderOption = None,
):
    """Search abliteration parameters for a refusal × KL Pareto front on the validation split (Optuna TPE)."""
    if config is None and (out / "config.json").exists():
        config = out / "config.json"
    cfg = load_config_file(config, OptimizeConfig, section="optimize" if config and config.suffix == ".toml" else None,
                           model=model, trials=trials, max_kl=max_kl, time_budget_min=time_budget,
                           device_map=device_map, offload_folder=offload_folder)
    lm = load(cfg)
    pareto = optimize_job(lm, cfg, out)
    shown = pareto[[c for c in ("trial", "refusal_rate", "refusals", "n", "kl", "nll_change", "p_refusal",
                                "noncompliant_rate", "noncompliant", "covert", "judged_n", "source",
                                "direction_scope") if c in pareto]]
    print_table(shown, f"Pareto front (validation refusal rate, {cfg.objective} of {len(cfg.contexts)} chat "
                f"contexts, × KL; per context in the file) → {out / 'pareto.csv'}")
    if heldout:
        scores = assess_front(lm, out, heldout)
        write_csv(scores.summary, out / "heldout.csv")
        write_csv(scores.contexts, out / "heldout-contexts.csv")
        print_table(scores.summary, f"the front on held-out requests (never seen by the search) → "
                    f"{out / 'heldout.csv'}; per chat context and request set → {out / 'heldout-contexts.csv'}")
    if cfg.capability_check.enabled:
        capability = trial_capability(lm, out, cfg)
        write_csv(capability, out / "capability.csv")
        print_table(capability, f"capability of the trial abliterate exports against the base (95 % intervals; "
                    f"perplexity relative) → {out / 'capability.csv'}")
    if heldout_judged:
        judged = judge_heldout(lm, out, [choose_trial(out, None, cfg.max_kl)[0]], heldout_judged)
        write_csv(judged, out / "heldout-compliance.csv")
        print_table(judged[["trial", "context", "set", "n", "refusals", "noncompliant", "covert", "incoherent"]],
                    f"the exported trial on held-out requests, {cfg.judge} and the llm judge at "
                    f"{cfg.compliance_check.max_new_tokens} tokens → {out / 'heldout-compliance.csv'}")
