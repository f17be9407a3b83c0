"""The run: one config, one run directory, one pipeline — extract (every method, every scope) → compare.

``refusal-lab run`` and ``refusal-lab compare`` are the same job; the demo config is a preset of the comparison (DiM
ablation and ActAdd with their random controls, generation measure). Layout of the run directory:

    RUN_DIR/fingerprint.json  model, data hash and config (a rerun with another is refused: RunDirectory)
    RUN_DIR/stages/*.done   one marker per finished stage, with its timing (splits, extract and its steps, compare)
    RUN_DIR/config.json     the RunConfig, readable
    RUN_DIR/manifest.json   model, data hash, code version, timings per stage (copied from the markers)
    RUN_DIR/splits.json     the exact train / val / test prompts (pairwise disjoint)
    RUN_DIR/ranking.json    DiM's layer ranking
    RUN_DIR/methods/...     candidates, selection tables and chosen artifacts (:mod:`refusal_lab.pipeline.artifacts`)
    RUN_DIR/comparison/<measure>/...   the held-out evaluation (:mod:`refusal_lab.pipeline.comparison`)
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt
from rich.console import Console

from refusal_lab import __version__
from refusal_lab.core.config import ConfigModel, load_config_file
from refusal_lab.core.io import read_json, write_json
from refusal_lab.data import Splits, dataset_splits
from refusal_lab.methods.registry import MethodsConfig
from refusal_lab.models.bundled import DEFAULT_MODEL
from refusal_lab.models.load import load_model
from refusal_lab.models.placement import DeviceMapSetting
from refusal_lab.pipeline.comparison import CompareConfig, Comparison, compare
from refusal_lab.pipeline.extraction import (
    Extraction,
    extract,
    extraction_stages,
    fit_context,
)
from refusal_lab.pipeline.rundir import RunDirectory
from refusal_lab.selection.select import SelectionConfig

log = Console(stderr=True).log


class RunConfig(ConfigModel):
    """Everything that determines a run's numbers (saved as RUN_DIR/config.json)."""

    model: str = DEFAULT_MODEL
    dtype: str = "auto"
    # where the model's modules go (refusal_lab.models.placement): None, one device; "auto", a {module: device} table
    # or a .json/.toml file, through accelerate. Placement only: not part of the run's fingerprint (PLACEMENT)
    device_map: DeviceMapSetting = None
    offload_folder: str | None = None  # where "disk"-placed weights are written when not read from the checkpoint
    seed: int = 0
    # refusal_lab.data.sources; mixed (half topic-matched pairs, half AdvBench vs generic requests) is the default:
    # its direction both bypasses and induces on held-out generic requests (docs/results/training-data.md, "Which
    # training data")
    data: Literal["matched", "unmatched", "mixed"] = "mixed"
    n_train: int = Field(128, ge=2)
    n_val: int = Field(64, ge=2)
    batch_size: PositiveInt = 32
    extract_methods: list[str] = ["dim"]
    selection: SelectionConfig = SelectionConfig()
    methods: MethodsConfig = MethodsConfig()
    compare: CompareConfig = CompareConfig(measure="generation", kinds=["ablate", "actadd"], scopes=["all"],
                                           actadd_scopes=["layer"], sweep_max_k=0, center_variants=False)


#: the settings that only say where the model runs: a run directory made on one device resumes on several
PLACEMENT = {"device_map": None, "offload_folder": None}


def load_run_model(config):
    """The model of a RunConfig / OptimizeConfig, in its dtype and placement."""
    return load_model(config.model, dtype=config.dtype, device_map=config.device_map,
                      offload_folder=config.offload_folder)


def load_config(path: str | Path | None, **overrides) -> RunConfig:
    """A RunConfig from a JSON or TOML file (or defaults); ``overrides`` (non-None) may be dotted keys, e.g.
    ``{"compare.n_eval": 64}``. Errors are one line naming the file, the key and what is allowed."""
    return load_config_file(path, RunConfig, **overrides)


def code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def prepare_splits(config: RunConfig, run_dir: Path) -> Splits:
    """The train / val / test splits of ``config.data``: made and saved by stage ``splits`` of ``run_dir``, read
    back once that stage finished."""
    directory = RunDirectory(run_dir)
    path = directory.path / "splits.json"
    if directory.done("splits"):
        return Splits.load(path)
    with directory.stage("splits") as info:
        splits = dataset_splits(config.data, n_train=config.n_train, n_val=config.n_val, seed=config.seed)
        splits.save(path)
        info["data_hash"] = splits.data_hash()
    return splits


def open_run(config: RunConfig, run_dir: str | Path, lm=None) -> tuple[Path, Splits]:
    """Create or reopen ``run_dir`` for ``config`` and its splits, checking its fingerprint
    (:class:`~refusal_lab.pipeline.rundir.RunDirectory`): the model's weights and dtype, the data and every setting that
    determines extraction must match what created it. The ``[compare]`` settings are not part of it: each
    comparison directory checks its own."""
    run_dir = Path(run_dir)
    directory = RunDirectory(run_dir)
    directory.bind(config=config.model_copy(update={"compare": CompareConfig(), **PLACEMENT}))
    if not (run_dir / "config.json").exists():
        write_json(run_dir / "config.json", json.loads(config.model_dump_json()))
    splits = prepare_splits(config, run_dir)
    directory.bind(lm=lm, data_hash=splits.data_hash())
    return run_dir, splits


def record_timing(run_dir: str | Path, stage: str, lm=None, splits: Splits | None = None) -> None:
    """Copy finished stage ``stage``'s time from its marker into ``RUN_DIR/manifest.json`` (``timings_s``, what
    the benchmarks and the docs' timing tables read), with the model and data it ran on where given."""
    directory = RunDirectory(run_dir)
    path = directory.path / "manifest.json"
    manifest = read_json(path) if path.exists() else {}
    if lm is not None and splits is not None:
        manifest |= {"model": lm.name, "source": lm.source, "data_hash": splits.data_hash(),
                     "code_version": code_version(), "dtype": str(lm.dtype), "split_sizes": splits.sizes()}
    manifest.setdefault("timings_s", {})[stage] = directory.record(stage)["seconds"]
    write_json(path, manifest)


def run_extract(lm, config: RunConfig, run_dir: str | Path, methods=None) -> Extraction:
    """:func:`~refusal_lab.pipeline.extraction.extract` as stage ``extract`` (its steps are stages of their own);
    when every step has finished it only reads them back, and the stage's marker and timing stay as they were."""
    run_dir, splits = open_run(config, run_dir, lm)
    methods = methods or config.extract_methods
    directory = RunDirectory(run_dir)
    if all(directory.done(stage) for stage in extraction_stages(config, methods)):
        return extract(lm, splits, config, run_dir, methods)
    with directory.stage("extract") as info:
        extraction = extract(lm, splits, config, run_dir, methods)
        info["methods"] = list(dict.fromkeys(["dim", *methods]))
    record_timing(run_dir, "extract", lm, splits)
    return extraction


def run_compare(lm, config: RunConfig, run_dir: str | Path, fits=None) -> Comparison:
    """The held-out intervention matrix as stage ``compare-<measure>[-<eval set>]``; ``fits``: the run's train-split
    fit context if the caller has one. The comparison checks its own settings and resumes row by row
    (:func:`~refusal_lab.pipeline.comparison.compare`), so the stage always runs."""
    run_dir, splits = open_run(config, run_dir, lm)
    needs_fits = (config.compare.center_variants or "leace" in config.compare.kinds
                  or config.compare.measure == "landing")
    suffix = "" if config.compare.eval_set == "test" else f"-{config.compare.eval_set}"
    stage = f"compare-{config.compare.measure}{suffix}"
    with RunDirectory(run_dir).stage(stage):
        result = compare(lm, run_dir, splits, config.compare,
                         (fits or fit_context(lm, splits, config)) if needs_fits else None)
    record_timing(run_dir, stage, lm, splits)
    return result


def run(config: RunConfig, run_dir: str | Path, lm=None) -> tuple[Extraction, Comparison | None]:
    """The whole job, resumable: extract every configured method → compare on held-out prompts."""
    open_run(config, run_dir)  # settings and data checked (and recorded) before minutes of model loading
    lm = lm or load_run_model(config)
    extraction = run_extract(lm, config, run_dir)
    if extraction.chosen.get(("dim", config.selection.scopes[0])) is None:
        return extraction, None
    return extraction, run_compare(lm, config, run_dir, extraction.fits)
