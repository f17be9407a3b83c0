"""``refusal-lab run`` and ``refusal-lab extract``: one run's methods fitted and selected (and, for run, compared)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from refusal_lab.cli.common import cap_n_eval, load, run_config
from refusal_lab.cli.options import (
    ConfigOption,
    DeviceMapOption,
    Method,
    ModelOption,
    OffloadFolderOption,
    Scope,
    out_dir_option,
)
from refusal_lab.cli.tables import console, print_comparison, report_selection
from refusal_lab.pipeline.experiment import prepare_splits, run_extract
from refusal_lab.pipeline.experiment import run as run_job


def run(
    out: Annotated[Path, typer.Option(help="run directory (resumable)", callback=out_dir_option)] = Path("runs/main"),
    config: ConfigOption = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m")] = None,
    n_eval: Annotated[Optional[int], typer.Option(help="held-out prompts per side", min=1)] = None,
    device_map: DeviceMapOption = None,
    offload_folder: OffloadFolderOption = None,
):
    """One run: extract and select every configured method, then compare on held-out prompts (the DiM preset; the
    study of every method, metric and figure is `refusal-lab study --config FILE --out DIR`)."""
    cfg = run_config(config, None, model=model, device_map=device_map, offload_folder=offload_folder,
                     **{"compare.n_eval": n_eval})
    n_eval = cap_n_eval(cfg.compare.n_eval, prepare_splits(cfg, out))
    cfg = cfg.model_copy(update={"compare": cfg.compare.model_copy(update={"n_eval": n_eval})})
    console.print(f"[bold]refusal-lab run[/] model={cfg.model} → {out}")
    extraction, comparison = run_job(cfg, out)
    report_selection(extraction)
    if comparison is not None:
        print_comparison(comparison, f"held-out refusal ({cfg.model}, {cfg.compare.measure})")
    console.print(f"run directory: {out}")


def extract(model: ModelOption, out: Annotated[Path, typer.Option(help="run directory", callback=out_dir_option)],
            config: ConfigOption = None,
            method: Annotated[Optional[list[Method]], typer.Option(help="repeatable; methods to fit and select "
                                                                  "(DiM always runs first)")] = None,
            scope: Annotated[Optional[list[Scope]], typer.Option(help="repeatable; scopes to select at "
                                                                "(default: the config's, else all)")] = None,
            device_map: DeviceMapOption = None, offload_folder: OffloadFolderOption = None):
    """Fit every requested method on the train split, select each at every scope on the val split, and write the
    ranked tables and chosen artifacts to OUT/methods/<method>/."""
    overrides = {"model": model, "device_map": device_map, "offload_folder": offload_folder}
    if scope:
        overrides["selection.scopes"] = [s.value for s in scope]
    cfg = run_config(config, out, **overrides)
    extraction = run_extract(load(cfg), cfg, out, [m.value for m in method] if method else None)
    report_selection(extraction)
    if all(chosen is None for chosen in extraction.chosen.values()):
        raise typer.Exit(1)
