"""``refusal-lab compare --run RUN_DIR``: the intervention matrix of one run on held-out prompts. (Its old second
job, ``--config FILE --out DIR``, is now ``refusal-lab study``; it still works for one release, with a note.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from refusal_lab.cli.commands.study import run_and_report
from refusal_lab.cli.common import cap_n_eval, load, require_run_dir, run_config
from refusal_lab.cli.options import (
    ConfigOption,
    DeviceMapOption,
    EvalSet,
    Measure,
    OffloadFolderOption,
    RunDirOption,
    Scope,
    out_dir_option,
)
from refusal_lab.cli.tables import note, print_comparison
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.data import Splits
from refusal_lab.pipeline.comparison import CompareConfig
from refusal_lab.pipeline.experiment import run_compare

DEPRECATED = ("note: `refusal-lab compare --config FILE --out DIR` is deprecated and goes in the next release; "
              "use `refusal-lab study --config FILE --out DIR`")


def compare(
    run_dir: RunDirOption = None,
    out: Annotated[Optional[Path], typer.Option(help="deprecated (the study's directory, with --config): use "
                                                "refusal-lab study --config FILE --out DIR",
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
    eval_set: Annotated[Optional[EvalSet], typer.Option(help="test (the run's test split), generic / advbench "
                                                        "(held-out AdvBench vs generic everyday requests) or "
                                                        "harmbench (HarmBench behaviours vs the same)")] = None,
    device_map: DeviceMapOption = None,
    offload_folder: OffloadFolderOption = None,
):
    """The intervention matrix of one run (--run RUN_DIR) on held-out prompts
    (RUN/comparison/<measure>/{comparison,rank_k_sweep}.csv; resumable). The study of a whole config is
    `refusal-lab study --config FILE --out DIR`."""
    if out is not None:
        note(DEPRECATED)
        if config is None or run_dir is not None:
            raise RefusalLabError("compare --out runs a study: pass --config FILE (e.g. configs/demo.toml) and no "
                                  "--run, or better, refusal-lab study --config FILE --out DIR")
        return run_and_report(config, out)
    if run_dir is None:
        raise RefusalLabError("compare needs --run RUN_DIR (one run's intervention matrix); the study of a config "
                              "is refusal-lab study --config FILE --out DIR")
    require_run_dir(run_dir)
    cfg = run_config(config, run_dir, model=model, device_map=device_map, offload_folder=offload_folder)
    n_eval = cap_n_eval(n_eval, Splits.load(run_dir / "splits.json")) if (run_dir / "splits.json").exists() else n_eval
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
    result = run_compare(load(cfg), cfg, run_dir)
    print_comparison(result, f"held-out comparison ({cfg.compare.measure})")
