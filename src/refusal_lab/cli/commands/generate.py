"""``refusal-lab generate``: greedy completions of a prompt file, optionally under one of a run's interventions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from refusal_lab.cli.options import (
    DeviceMapOption,
    FlipVariant,
    InterventionKind,
    ModelOption,
    OffloadFolderOption,
    RunDirOption,
    Scope,
    Site,
    out_file_option,
)
from refusal_lab.cli.tables import console
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.data import load_prompts_for_generation
from refusal_lab.evaluation.generate import cached_generations
from refusal_lab.evaluation.judges import is_refusal
from refusal_lab.evaluation.vllm_backend import BACKENDS, VllmGenerator
from refusal_lab.models.load import load_model
from refusal_lab.pipeline.apply import run_interventions


def generate(
    model: ModelOption,
    prompts: Annotated[Path, typer.Option(help=".txt (a prompt a line), .jsonl (field prompt) or .csv (prompt/goal)")],
    out: Annotated[Path, typer.Option(help="output .jsonl", callback=out_file_option)],
    run_dir: RunDirOption = None,
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
    backend: Annotated[str, typer.Option(help="hf (transformers) or vllm (the interventions that bake into "
                                         "weights; pip install 'refusal-lab[vllm]')")] = "hf",
    tensor_parallel_size: Annotated[int, typer.Option(min=1, help="vLLM's tensor_parallel_size")] = 1,
    device_map: DeviceMapOption = None,
    offload_folder: OffloadFolderOption = None,
):
    """Greedy completions, optionally under one of the run's interventions."""
    if backend not in BACKENDS:
        raise RefusalLabError(f"unknown --backend {backend!r}; backends are {', '.join(BACKENDS)}")
    vllm = VllmGenerator(tensor_parallel_size) if backend == "vllm" else None  # fails fast without vLLM
    texts = load_prompts_for_generation(prompts)
    if intervention != InterventionKind.none and run_dir is None:
        raise RefusalLabError(f"--intervention {intervention.value} needs --run RUN_DIR (from refusal-lab extract)")
    lm = load_model(model, device_map=device_map, offload_folder=offload_folder)
    params = {"scale": scale, "alpha": alpha, "k": k, "sites": [s.value for s in site] if site else None}
    if flip_variant is not None:
        params["flip_variant"] = flip_variant.value
    interventions = run_interventions(lm, run_dir, intervention.value, scope.value if scope else None,
                                      **params) if intervention != InterventionKind.none else []
    completions = cached_generations(lm, out, texts, interventions, max_new_tokens, batch_size,
                                     vllm.generate_ids if vllm else None)
    if vllm is not None:
        vllm.close()
    console.print(f"{len(texts)} completions → {out} (refusals: {sum(map(is_refusal, completions))})")
