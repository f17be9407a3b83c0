"""Residual-stream activations at the post-instruction positions of every layer.

``collect_activations`` returns, for prompts ``x_1..x_n``, the inputs of every decoder layer (``resid_pre``) at
the last ``P`` prompt positions (the chat template's post-instruction tokens; with left padding they are the last
``P`` positions of every row): per-prompt ``acts [n, L, P, d]`` in the model's dtype and their float64 mean
``[L, P, d]`` accumulated batch by batch, on the host whatever devices the layers run on (a device map). Results are
cached on disk keyed by model + prompts + template.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
from rich.progress import Progress
from safetensors.torch import load_file, save_file

from refusal_lab.core.io import atomic_path
from refusal_lab.models.bundled import cache_dir
from refusal_lab.models.forward import prefix_batches
from refusal_lab.models.placement import stack_on_host


@dataclass
class Activations:
    """``acts [n, L, P, d]`` (model dtype) and ``mean [L, P, d]`` (float64) for one prompt set."""

    acts: torch.Tensor
    mean: torch.Tensor

    @property
    def n_layers(self) -> int:
        return self.acts.shape[1]


def _cache_key(lm, prompts: list[str]) -> str:
    payload = json.dumps([lm.source, lm.name, str(lm.dtype), lm.format(["x"])[0], prompts]).encode()
    return hashlib.sha256(payload).hexdigest()[:24]


@torch.no_grad()
def collect_activations(lm, prompts: list[str], batch_size: int = 16, use_cache: bool = True,
                        description: str = "activations") -> Activations:
    """Collect ``resid_pre`` of every layer at the post-instruction positions (see module docstring).

    Prompts are batched in length order (less padding), the shared template prefix runs once
    (:mod:`refusal_lab.models.forward`), and only the decoder body runs (no unembedding).
    """
    key = _cache_key(lm, prompts)
    path = cache_dir() / "activations" / f"{key}.safetensors"
    if use_cache and path.exists():
        stored = load_file(str(path))
        return Activations(stored["acts"], stored["mean"])

    n_pos, layers = lm.n_post_instruction, lm.adapter.layers(lm.model)
    acts = torch.empty(len(prompts), len(layers), n_pos, lm.hidden_size, dtype=lm.dtype)
    total = torch.zeros(len(layers), n_pos, lm.hidden_size, dtype=torch.float64)
    captured: list[torch.Tensor] = [None] * len(layers)

    def capture(index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            captured[index] = hidden[:, -n_pos:, :].detach()
        return hook

    handles = [layer.register_forward_pre_hook(capture(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task(description, total=len(prompts))
            for batch in prefix_batches(lm, prompts, batch_size, keep=n_pos, body_only=True):
                lm.model.model(**batch.inputs, use_cache=True)
                stacked = stack_on_host(captured, dim=1)  # [b, L, P, d]; layers may sit on several devices
                acts[batch.rows] = stacked.to(acts.dtype)
                total += stacked.double().sum(0)
                progress.advance(task, len(batch.rows))
    finally:
        for handle in handles:
            handle.remove()
    result = Activations(acts, total / max(len(prompts), 1))
    if use_cache:
        with atomic_path(path) as tmp:
            save_file({"acts": result.acts.contiguous(), "mean": result.mean}, str(tmp))
    return result
