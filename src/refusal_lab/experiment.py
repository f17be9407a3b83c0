"""The main job: extract DiM candidates → select one direction → evaluate ablation and ActAdd on held-out prompts.

A run directory holds everything a result needs to be reproduced and nothing is recomputed on resume: each stage
writes its file atomically and is skipped when the file exists (generations are saved per condition).

    RUN_DIR/config.json          the RunConfig used
    RUN_DIR/manifest.json        model, data hash, code version, timings
    RUN_DIR/splits.json          the exact train / val / test prompts (pairwise disjoint)
    RUN_DIR/candidates.safetensors  DiM candidates r(l, i)  [L, P, d]
    RUN_DIR/selection.csv        every candidate with its scores and filter status, best first
    RUN_DIR/direction.{safetensors,json}  the chosen direction with provenance
    RUN_DIR/generations/*.jsonl  completions per condition
    RUN_DIR/results.csv          refusal rates with 95 % Wilson intervals and Δ vs baseline, KL
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from pydantic import Field, NonNegativeInt, PositiveInt
from rich.console import Console
from safetensors.torch import load_file, save_file

from refusal_lab import __version__
from refusal_lab.activations import collect_activations
from refusal_lab.data import HARMFUL, HARMLESS, Splits, builtin_prompts, make_splits
from refusal_lab.config import ConfigModel, load_config_file
from refusal_lab.directions.base import Direction, Provenance, load_artifact
from refusal_lab.directions.dim import dim_candidates
from refusal_lab.errors import RefusalLabError
from refusal_lab.evaluation.generate import generate
from refusal_lab.evaluation.judges import is_refusal
from refusal_lab.evaluation.metrics import Rate
from refusal_lab.interventions.hooks import Intervention
from refusal_lab.io import write_json, write_jsonl
from refusal_lab.models.bundled import DEFAULT_MODEL
from refusal_lab.scoring import kl_divergence, last_token_logprobs
from refusal_lab.selection import SelectionConfig, SelectionResult, ablation, actadd, select_direction


log = Console(stderr=True).log


class RunConfig(ConfigModel):
    """Everything that determines a run's numbers (saved as RUN_DIR/config.json)."""

    model: str = DEFAULT_MODEL
    dtype: str = "auto"
    seed: int = 0
    n_train: PositiveInt = 128
    n_val: PositiveInt = 32
    n_eval: PositiveInt | None = Field(None, description="held-out prompts per side to evaluate (None: the whole "
                                                         "test split)")
    batch_size: PositiveInt = 32
    max_new_tokens: PositiveInt = 24
    actadd_scale: float = 1.0
    control_seeds: NonNegativeInt = 1
    selection: SelectionConfig = SelectionConfig()


def load_config(path: str | Path | None, **overrides) -> RunConfig:
    """A RunConfig from a JSON or TOML file (or defaults), with non-None ``overrides`` applied (the file's
    ``[methods]`` table is read by :func:`refusal_lab.methods.method_config_from`)."""
    return load_config_file(path, RunConfig, ignore=("methods",), **overrides)


def code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def prepare_splits(config: RunConfig, run_dir: Path) -> Splits:
    """The builtin matched pairs split by pair (or the splits already saved in ``run_dir``)."""
    path = run_dir / "splits.json"
    if path.exists():
        return Splits.load(path)
    prompts = builtin_prompts()
    splits = make_splits(prompts.filter(label=HARMFUL), prompts.filter(label=HARMLESS), n_train=config.n_train,
                         n_val=config.n_val, n_test=None, seed=config.seed, keep_pairs=True)
    splits.save(path)
    return splits


@dataclass
class Extraction:
    candidates: torch.Tensor  # [L, P, d]
    selection: SelectionResult | None  # None when resumed from the run directory
    direction: Direction | None  # None when no candidate passed the filters
    ranking: pd.DataFrame | None = None  # the ranked selection table (also RUN_DIR/selection.csv)


def extract(lm, splits: Splits, config: RunConfig, run_dir: Path) -> Extraction:
    """DiM candidates from the train split, selection on the val split; resumes from ``run_dir``."""
    candidates_path = run_dir / "candidates.safetensors"
    if candidates_path.exists():
        candidates = load_file(str(candidates_path))["candidates"]
    else:
        log(f"collecting activations: {len(splits.train_harmful)} + {len(splits.train_harmless)} train prompts")
        harmful = collect_activations(lm, splits.train_harmful.texts, config.batch_size, description="harmful acts")
        harmless = collect_activations(lm, splits.train_harmless.texts, config.batch_size,
                                       description="harmless acts")
        candidates = dim_candidates(harmful.mean, harmless.mean)
        save_file({"candidates": candidates.contiguous()}, str(candidates_path))
    if (run_dir / "direction.json").exists():
        direction = load_artifact(run_dir / "direction", hidden_size=lm.hidden_size)
        return Extraction(candidates, None, direction)
    if (run_dir / "selection.csv").exists():  # selection ran and nothing passed: do not redo minutes of work
        log(f"resuming: selection in {run_dir} found no passing candidate; use a new --out to select again")
        return Extraction(candidates, None, None, pd.read_csv(run_dir / "selection.csv"))
    log(f"selecting among {candidates.shape[0]} layers x {candidates.shape[1]} positions ({config.selection.mode})")
    selection = select_direction(lm, candidates, splits.val_harmful.texts, splits.val_harmless.texts,
                                 config.selection)
    selection.save(run_dir / "selection.csv")
    direction = None
    if selection.chosen is not None:
        c = selection.chosen
        direction = Direction(
            candidates[c.layer, c.position],
            Provenance(model=lm.name, method="dim", hidden_size=lm.hidden_size, layer=c.layer, position=c.position,
                       data_hash=splits.data_hash(),
                       extra={"bypass": c.bypass, "induce": c.induce, "kl": c.kl,
                              "baseline_harmful": selection.baseline_harmful,
                              "baseline_harmless": selection.baseline_harmless, "n_layers": lm.n_layers,
                              "ranked_layers": selection.ranked_layers()}),
        )
        direction.save(run_dir / "direction")
    return Extraction(candidates, selection, direction, selection.table())


def random_control(direction: Direction, seed: int) -> Direction:
    """A random direction with the same norm: the control every effect is shown beside."""
    noise = torch.randn(direction.vector.shape, generator=torch.Generator().manual_seed(seed))
    vector = noise / noise.norm() * direction.norm
    return Direction(vector, Provenance(direction.provenance.model, "random", direction.provenance.hidden_size,
                                        direction.provenance.layer, direction.provenance.position,
                                        direction.provenance.data_hash, {"seed": seed}))


def intervention_for(kind: str, direction: Direction, n_layers: int, scale: float = 1.0) -> list[Intervention]:
    """``ablate`` (every layer and site) or ``actadd`` (+scale·v at the direction's layer)."""
    if kind == "none":
        return []
    if kind == "ablate":
        return [ablation(direction.unit, n_layers)]
    if kind == "actadd":
        return [actadd(direction.vector, direction.provenance.layer, scale)]
    raise RefusalLabError(f"unknown intervention {kind!r}; choose ablate or actadd")


def generations(lm, name: str, prompts: list[str], interventions, config: RunConfig, run_dir: Path) -> list[str]:
    """Greedy completions for one condition, cached as RUN_DIR/generations/NAME.jsonl."""
    path = run_dir / "generations" / f"{name}.jsonl"
    if path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        if [r["prompt"] for r in rows] == prompts:
            return [r["response"] for r in rows]
    completions = generate(lm, prompts, interventions, config.max_new_tokens, config.batch_size, description=name)
    write_jsonl(path, ({"prompt": p, "response": r, "refusal": is_refusal(r)} for p, r in zip(prompts, completions)))
    return completions


def evaluate(lm, direction: Direction, splits: Splits, config: RunConfig, run_dir: Path) -> pd.DataFrame:
    """Refusal rates on held-out harmful / harmless prompts for baseline, ablation, ActAdd and random controls."""
    harmful = splits.test_harmful.texts[: config.n_eval]
    harmless = splits.test_harmless.texts[: config.n_eval]
    controls = [random_control(direction, seed) for seed in range(config.control_seeds)]
    conditions = [("baseline", "none", None, harmful, HARMFUL), ("ablate", "ablate", direction, harmful, HARMFUL)]
    conditions += [(f"ablate-random{c.provenance.extra['seed']}", "ablate", c, harmful, HARMFUL) for c in controls]
    conditions += [("baseline", "none", None, harmless, HARMLESS), ("actadd", "actadd", direction, harmless, HARMLESS)]
    conditions += [(f"actadd-random{c.provenance.extra['seed']}", "actadd", c, harmless, HARMLESS) for c in controls]
    rows, baseline = [], {}
    base_lp = last_token_logprobs(lm, harmless, batch_size=config.batch_size)
    for name, kind, d, prompts, label in conditions:
        interventions = intervention_for(kind, d, lm.n_layers, config.actadd_scale) if d else []
        log(f"evaluating {name} on {len(prompts)} {label} prompts")
        completions = generations(lm, f"{name}-{label}", prompts, interventions, config, run_dir)
        rate = Rate(sum(map(is_refusal, completions)), len(completions))
        baseline.setdefault(label, rate.value)
        low, high = rate.wilson()
        kl = float("nan")
        if kind == "ablate":
            kl = float(kl_divergence(base_lp, last_token_logprobs(lm, harmless, interventions,
                                                                  config.batch_size)).mean())
        rows.append({"condition": name, "prompts": f"test {label}", "n": rate.n, "refusal_rate": rate.value,
                     "ci_low": low, "ci_high": high, "delta_vs_baseline": rate.value - baseline[label],
                     "kl_harmless": kl})
    table = pd.DataFrame(rows)
    table.to_csv(run_dir / "results.csv", index=False)
    return table


def run(config: RunConfig, run_dir: str | Path, lm=None) -> tuple[Extraction, pd.DataFrame | None]:
    """The whole job, resumable: extract → select → evaluate, writing everything into ``run_dir``."""
    from refusal_lab.models.load import load_model

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.json"
    if saved.exists() and json.loads(saved.read_text()) != json.loads(config.model_dump_json()):
        raise RefusalLabError(f"{run_dir} holds a run with a different config; use a new --out directory")
    write_json(saved, json.loads(config.model_dump_json()))
    timings = {}
    start = time.perf_counter()
    lm = lm or load_model(config.model, dtype=config.dtype)
    timings["load_s"] = time.perf_counter() - start
    splits = prepare_splits(config, run_dir)
    start = time.perf_counter()
    extraction = extract(lm, splits, config, run_dir)
    timings["extract_select_s"] = time.perf_counter() - start
    table = None
    if extraction.direction is not None:
        start = time.perf_counter()
        table = evaluate(lm, extraction.direction, splits, config, run_dir)
        timings["evaluate_s"] = time.perf_counter() - start
    manifest_path = run_dir / "manifest.json"
    previous = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if extraction.selection is None:  # resumed: keep the timings of the run that did the selection
        timings["extract_select_s"] = previous.get("timings", {}).get("extract_select_s", timings["extract_select_s"])
        selection_timings = previous.get("selection_timings_s", {})
    else:
        selection_timings = extraction.selection.extra.get("timings_s", {})
    write_json(manifest_path, {"model": lm.name, "source": lm.source, "data_hash": splits.data_hash(),
                               "code_version": code_version(), "dtype": str(lm.dtype),
                               "split_sizes": splits.sizes(), "timings": timings,
                               "selection_timings_s": selection_timings})
    return extraction, table
