"""Greedy generation under interventions, batched with left padding."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.progress import Progress

from refusal_lab.interventions.hooks import Intervention, apply_interventions


@torch.no_grad()
def generate(lm, prompts: Sequence[str], interventions: Sequence[Intervention] = (), max_new_tokens: int = 24,
             batch_size: int = 16, description: str = "generating") -> list[str]:
    """Greedy completions of chat-formatted ``prompts`` with ``interventions`` hooked in for every token."""
    completions: list[str] = []
    with apply_interventions(lm, interventions), Progress(transient=True) as progress:
        task = progress.add_task(description, total=len(prompts))
        for start in range(0, len(prompts), batch_size):
            batch = lm.tokenize(list(prompts[start : start + batch_size]))
            output = lm.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                       pad_token_id=lm.tokenizer.pad_token_id)
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            completions += lm.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            progress.advance(task, len(batch["input_ids"]))
    return completions


def cached_generations(lm, path: Path, prompts: Sequence[str], interventions: Sequence[Intervention] = (),
                       max_new_tokens: int = 24, batch_size: int = 16) -> list[str]:
    """:func:`generate`, cached as JSONL at ``path`` (reused only for the same prompts and length)."""
    from refusal_lab.evaluation.judges import is_refusal
    from refusal_lab.io import write_jsonl

    if path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        if [r["prompt"] for r in rows] == list(prompts) and all(r.get("max_new_tokens") == max_new_tokens
                                                                 for r in rows):
            return [r["response"] for r in rows]
    completions = generate(lm, prompts, interventions, max_new_tokens, batch_size, description=path.stem)
    write_jsonl(path, ({"prompt": p, "response": r, "refusal": is_refusal(r), "max_new_tokens": max_new_tokens}
                       for p, r in zip(prompts, completions)))
    return completions
