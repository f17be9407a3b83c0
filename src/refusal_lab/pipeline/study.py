"""The study: one config, every model × method × intervention × metric, explained (``refusal-lab study --config``).

Per model (``RUN_DIR/<model>/``, a run directory of :mod:`refusal_lab.pipeline.experiment`): extract and select every
configured method (one activation collection, shared); evaluate the planned interventions (``[compare]``: kinds, α,
k, scales, flip variants, centring, scopes, sites) with the evaluation suite (``[evaluate]``: metrics, judges,
prompts; one baseline per metric, judge calls cached) into ``RUN_DIR/<model>/evaluation/``; analyse the geometry
(:mod:`refusal_lab.pipeline.study_analysis`) into ``RUN_DIR/<model>/analysis/``; draw the figures into
``RUN_DIR/figures/``.
Then ``RUN_DIR/report.html`` and ``RUN_DIR/findings.json`` check the seed study's findings on every model.

``RUN_DIR`` binds the StudyConfig (:class:`~refusal_lab.pipeline.rundir.RunDirectory`: another config is refused,
naming the setting). Per model, ``extract``, ``evaluate``, ``analyse`` and ``figures`` are stages of the model's run
directory: a finished one is not redone (its results are read back), an interrupted one reruns (extraction and the
evaluation resume inside, step by step and unit by unit); each stage's time is in its marker and in the model's
``manifest.json``. One overall bar shows the ETA.
"""

from __future__ import annotations

import gc
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import PositiveInt
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from refusal_lab.analysis.findings import assess
from refusal_lab.analysis.report import write_report
from refusal_lab.evaluation.agreement import recorded_agreement
from refusal_lab.core.config import ConfigModel, load_config_file
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.io import write_json
from refusal_lab.data import Splits
from refusal_lab.models.adapters import SUPPORTED_MODEL_TYPES
from refusal_lab.models.bundled import BUNDLED, DEFAULT_MODEL
from refusal_lab.models.load import load_model
from refusal_lab.pipeline.evaluate import EvaluateConfig, evaluate, judge_name
from refusal_lab.pipeline.experiment import (
    PLACEMENT,
    RunConfig,
    code_version,
    open_run,
    record_timing,
    run_extract,
)
from refusal_lab.pipeline.rundir import RunDirectory
from refusal_lab.pipeline.study_analysis import analyse, draw_figures, load_evidence

if TYPE_CHECKING:
    from refusal_lab.analysis.findings import Finding

log = Console(stderr=True).log
# each stage's share of a model's wall time in the measured demo (README): the overall bar advances by these, so
# its ETA is in time, not in stage counts
STAGE_WEIGHTS = {"extract": 40, "evaluate": 50, "analyse": 9, "figures": 1}


class AnalysisConfig(ConfigModel):
    """The geometry analysis (``[analysis]``)."""

    n_geometry: PositiveInt = 32  # validation prompts per side: geometry table, landing, 2-D frames
    n_sensitivity: PositiveInt = 32  # prompts per side: batched vs one-by-one, matched vs unmatched DiM
    sensitivity: bool = True


class StudyConfig(RunConfig):
    """A study (``refusal-lab study --config FILE``): the run settings of every model, what to evaluate and how
    to analyse it. ``model`` is ignored; ``models`` lists them."""

    models: list[str] = [DEFAULT_MODEL]
    device: str = "auto"  # auto: cuda when present, else cpu; a device_map (RunConfig) places the model instead
    evaluate: EvaluateConfig = EvaluateConfig(interventions=["*"], judges=["substring", "markers"], control_seeds=1)
    analysis: AnalysisConfig = AnalysisConfig()

    def run_config(self, model: str) -> RunConfig:
        fields = {name: getattr(self, name) for name in RunConfig.model_fields}
        return RunConfig(**fields | {"model": model})


def load_study_config(path: str | Path | None, **overrides) -> StudyConfig:
    return load_config_file(path, StudyConfig, **overrides)


def model_slug(spec: str) -> str:
    """A directory name for a model spec (``Qwen/Qwen1.5-1.8B-Chat`` → ``Qwen--Qwen1.5-1.8B-Chat``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", spec.strip("/").replace("/", "--"))


def check_models(models: list[str]) -> None:
    """Fail in seconds, before any work, when a model is neither bundled, a local path nor loadable from the hub
    (or its cache), or has an architecture without an adapter."""
    for spec in models:
        if spec in BUNDLED or Path(spec).expanduser().exists():
            continue
        from transformers import AutoConfig

        try:
            model_type = AutoConfig.from_pretrained(spec).model_type
        except (OSError, ValueError) as error:
            raise RefusalLabError(
                f"model {spec!r} is not available here: not bundled ({', '.join(BUNDLED)}), not a local path, and "
                f"the Hugging Face hub could not provide it ({str(error).splitlines()[0][:160]}); download it "
                "where there is network (huggingface-cli download) or point models at a local directory") from None
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise RefusalLabError(f"model {spec!r} has architecture {model_type!r}, which no adapter supports "
                                  f"({', '.join(SUPPORTED_MODEL_TYPES)})")


def _bind_study(config: StudyConfig, out: Path) -> None:
    """Bind ``out`` to ``config`` (another config is refused, naming the setting that differs); ``study.json`` is
    its readable copy."""
    RunDirectory(out).bind(config=config.model_copy(update=PLACEMENT))
    if not (out / "study.json").exists():
        write_json(out / "study.json", json.loads(config.model_dump_json()))


def study_judge(config: StudyConfig) -> str:
    """The stored name of the judge the findings read: the first of ``evaluate.judges`` (``llm`` → ``llm:<model>…``)."""
    return judge_name(config.evaluate, config.evaluate.judges[0])


def run_study(config: StudyConfig, out: str | Path) -> tuple[Path, dict[str, list[Finding]]]:
    """The whole study, resumable: the report's path and each model's findings (as ``findings.json`` holds them)."""
    out = Path(out)
    check_models(config.models)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    out.mkdir(parents=True, exist_ok=True)
    _bind_study(config, out)
    for model in config.models:  # every model's settings and data checked before minutes of loading
        open_run(config.run_config(model), out / model_slug(model))
    evidences, figures, findings, data_hashes = [], {}, {}, {}
    columns = (TextColumn("[bold]study[/] {task.description}"), BarColumn(), TaskProgressColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    started = time.perf_counter()
    with Progress(*columns, console=Console(stderr=True)) as progress:
        bar = progress.add_task("", total=len(config.models) * sum(STAGE_WEIGHTS.values()))
        for model in config.models:
            run_cfg, model_dir = config.run_config(model), out / model_slug(model)
            progress.update(bar, description=f"{model}: load")
            lm = load_model(model, dtype=config.dtype, device=device, device_map=config.device_map,
                            offload_folder=config.offload_folder)
            progress.update(bar, description=f"{model}: extract")
            fits = run_extract(lm, run_cfg, model_dir, config.extract_methods).fits  # reused: fitted once
            progress.advance(bar, STAGE_WEIGHTS["extract"])
            progress.update(bar, description=f"{model}: evaluate")
            _staged(model_dir, "evaluate", _evaluate, (lm, config, run_cfg, model_dir, fits))
            progress.advance(bar, STAGE_WEIGHTS["evaluate"])
            progress.update(bar, description=f"{model}: analyse")
            evidence = _staged(model_dir, "analyse", analyse, (lm, config, run_cfg, model_dir, fits),
                               resumed=_resumed_evidence)
            progress.advance(bar, STAGE_WEIGHTS["analyse"])
            progress.update(bar, description=f"{model}: figures")
            figures[evidence.model] = _staged(model_dir, "figures", draw_figures,
                                              (evidence, out / "figures" / model_slug(model)),
                                              resumed=_resumed_figures, info=_figures_info)
            findings[evidence.model] = assess(evidence, judge=study_judge(config))
            data_hashes[evidence.model] = RunDirectory(model_dir).fingerprint().get("data_hash")
            evidences.append(evidence)
            progress.advance(bar, STAGE_WEIGHTS["figures"])
            del lm
            gc.collect()
    meta = {"models": config.models, "config": json.loads(config.model_dump_json()), "code_version": code_version(),
            "data_hashes": data_hashes, "agreement": recorded_agreement(),
            "wall_s": round(time.perf_counter() - started, 1)}
    return write_report(out, evidences, findings, figures, meta), findings


def _evaluate(lm, config: StudyConfig, run_cfg: RunConfig, model_dir: Path, fits) -> None:
    splits = Splits.load(model_dir / "splits.json")
    evaluate(lm, config.evaluate, model_dir / "evaluation", model_dir, run_cfg, splits, plan=config.compare, fits=fits)


def _staged(model_dir: Path, stage: str, work: Callable[..., Any], args: tuple,
            resumed: Callable[[Path, dict], Any] = lambda model_dir, info: None,
            info: Callable[[Any], dict] = lambda result: {}):
    """``work(*args)`` as stage ``stage`` of the model's run directory, its time copied into the manifest's
    ``timings_s`` and ``info(result)`` kept in its marker. A finished stage is not redone: its result is
    ``resumed(model_dir, marker info)``."""
    directory = RunDirectory(model_dir)
    finished = directory.record(stage)
    if finished is not None:
        return resumed(directory.path, finished["info"])
    with directory.stage(stage) as kept:
        result = work(*args)
        kept |= info(result)
    record_timing(model_dir, stage)
    return result


def _resumed_evidence(model_dir: Path, info: dict):
    return load_evidence(model_dir)


def _figures_info(drawn: list[tuple[str, Path]]) -> dict:
    return {"figures": [[caption, Path(path).name] for caption, path in drawn]}


def _resumed_figures(model_dir: Path, info: dict) -> list[tuple[str, Path]]:
    """The drawn figures, found under ``RUN_DIR/figures/<model>/`` by file name: a moved or copied study resumes
    from any working directory."""
    folder = model_dir.parent / "figures" / model_dir.name
    return [(caption, folder / Path(path).name) for caption, path in info["figures"]]


__all__ = ["AnalysisConfig", "StudyConfig", "check_models", "load_study_config", "model_slug",
           "run_study"]

