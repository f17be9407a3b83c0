"""Greedy generation under interventions: length-sorted batches that reuse the chat template's shared prefix.

Every chat-formatted prompt starts with the same tokens (the system turn and the user header). They run once, under
the active hooks; each batch then passes ``[prefix | left padding | rest]`` to ``generate`` with the prefix's
key/value cache repeated per row, so only the rest is prefilled. ``generate`` derives positions from the attention
mask's running count of real tokens, so a row's positions equal those of its unpadded, uncached prompt and the
greedy tokens match a plain one-prompt-at-a-time loop up to float rounding (tested). Prompts are sorted by length so
a batch carries little padding.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from rich.progress import Progress

from refusal_lab.core.io import write_jsonl
from refusal_lab.evaluation.judges import is_refusal
from refusal_lab.interventions.hooks import Intervention, apply_interventions
from refusal_lab.models.forward import common_prefix_length, run_prefix

OnBatch = Callable[[list[int], list[list[int]]], None]


@torch.no_grad()
def generate_ids(lm, prompts: Sequence[str], interventions: Sequence[Intervention] = (), max_new_tokens: int = 24,
                 batch_size: int = 16, on_batch: OnBatch | None = None,
                 description: str = "generating") -> list[list[int]]:
    """Greedy new-token ids for each chat-formatted prompt (in prompt order; each list stops after the first
    end-of-sequence token, which it keeps). ``on_batch(rows, ids)`` is called after every batch (e.g. to store it)."""
    ids = lm.tokenizer(lm.format(list(prompts)), add_special_tokens=False)["input_ids"]
    pad, stops = lm.tokenizer.pad_token_id, stop_ids(lm)
    results: list[list[int]] = [[] for _ in prompts]
    if not prompts:
        return results
    n_prefix = common_prefix_length(ids, keep=1)
    with apply_interventions(lm, interventions), Progress(transient=True) as progress:
        task = progress.add_task(description, total=len(prompts))
        prefix = run_prefix(lm, ids[0][:n_prefix])
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            # generate takes [prefix | padding | rest] whole and derives positions from the mask itself
            inputs = prefix.inputs([ids[i][n_prefix:] for i in rows], pad, lm.device)
            del inputs["position_ids"]
            inputs["input_ids"] = torch.cat([torch.tensor([prefix.ids] * len(rows), dtype=torch.long,
                                                          device=lm.device).view(len(rows), n_prefix),
                                             inputs["input_ids"]], dim=1)
            output = lm.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
            batch_ids = [until_stop(row.tolist(), stops) for row in output[:, inputs["input_ids"].shape[1]:]]
            for r, i in enumerate(rows):
                results[i] = batch_ids[r]
            if on_batch is not None:
                on_batch(rows, batch_ids)
            progress.advance(task, len(rows))
    return results


def stop_ids(lm) -> set[int]:
    """The token ids that end a generation: the generation config's end-of-sequence ids and the tokenizer's."""
    eos = lm.model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    return {i for i in [*eos, lm.tokenizer.eos_token_id] if i is not None}


def until_stop(ids: list[int], stops: set[int]) -> list[int]:
    """``ids`` up to and including the first stop token (all of them if none)."""
    for n, token in enumerate(ids):
        if token in stops:
            return ids[: n + 1]
    return ids


def decode(lm, ids: Sequence[int], max_new_tokens: int | None = None) -> str:
    """The text of the first ``max_new_tokens`` generated ids (all of them if None), special tokens dropped."""
    return lm.tokenizer.decode(list(ids)[:max_new_tokens], skip_special_tokens=True)


def generate(lm, prompts: Sequence[str], interventions: Sequence[Intervention] = (), max_new_tokens: int = 24,
             batch_size: int = 16, description: str = "generating", generator: Callable | None = None) -> list[str]:
    """Greedy completions (text) of chat-formatted ``prompts`` with ``interventions`` hooked in for every token
    (``generator``: :func:`generate_ids` or a backend's drop-in for it)."""
    return [decode(lm, ids) for ids in (generator or generate_ids)(lm, prompts, interventions, max_new_tokens,
                                                                    batch_size, description=description)]


def cached_generations(lm, path: Path, prompts: Sequence[str], interventions: Sequence[Intervention] = (),
                       max_new_tokens: int = 24, batch_size: int = 16, generator: Callable | None = None) -> list[str]:
    """:func:`generate`, cached as JSONL at ``path`` (reused only for the same prompts and length)."""
    if path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        if [r["prompt"] for r in rows] == list(prompts) and all(r.get("max_new_tokens") == max_new_tokens
                                                                 for r in rows):
            return [r["response"] for r in rows]
    completions = generate(lm, prompts, interventions, max_new_tokens, batch_size, path.stem, generator)
    write_jsonl(path, ({"prompt": p, "response": r, "refusal": is_refusal(r), "max_new_tokens": max_new_tokens}
                       for p, r in zip(prompts, completions)))
    return completions
