"""Batched forward passes that compute the prompts' shared prefix once (the chat template, a few-shot prompt).

Every chat-formatted prompt starts with the same tokens (e.g. Qwen's system turn and ``<|im_start|>user\\n``,
about half of a short prompt). :func:`prefix_batches` runs that prefix once, under whatever hooks are active, and
feeds each batch only the remaining tokens with the prefix's key/value cache repeated per row. The layout of a
batch is ``[prefix | left padding | rest]``; positions count real tokens only, so results equal an uncached,
unpadded forward up to float rounding (tested). :func:`token_batches` does the same for raw token lists.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


def position_ids_for(attention_mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row sees the same positions as an unpadded one."""
    return offset + (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def common_prefix_length(rows: Sequence[Sequence[int]], keep: int = 1) -> int:
    """Length of the longest common token prefix that still leaves ``keep`` tokens in every row."""
    limit = min(len(r) for r in rows) - keep
    first = rows[0]
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n


@dataclass
class Batch:
    rows: list[int]  # indices into the prompt list
    inputs: dict  # keyword arguments for the model's forward


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` ``[n, max_len]``: the rows right-aligned after ``pad_id`` padding, mask 1 on real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def repeat_cache(cache, n: int):
    """A copy of a one-row prefix key/value cache repeated for ``n`` rows (the original stays reusable)."""
    past = copy.deepcopy(cache)
    past.batch_repeat_interleave(n)
    return past


@dataclass
class SharedPrefix:
    """Tokens every row starts with, run once: their ids and key/value cache (None when there are none)."""

    ids: list[int]
    cache: object | None

    def inputs(self, rests: Sequence[Sequence[int]], pad_id: int, device, repeat: int = 1) -> dict:
        """Forward inputs for rows whose tokens after the prefix are ``rests`` (each repeated ``repeat`` times,
        repeat-major): the rests left-padded, the mask over ``[prefix | padding | rest]``, positions counting real
        tokens only, and the prefix's cache repeated per row (row ``r`` reads prefix row ``r // len(rests)``)."""
        rest, mask = left_pad(rests, pad_id)
        rest, mask = rest.repeat(repeat, 1), mask.repeat(repeat, 1)
        if self.cache is None:
            return {"input_ids": rest.to(device), "attention_mask": mask.to(device),
                    "position_ids": position_ids_for(mask).to(device)}
        full = torch.cat([torch.ones(len(rest), len(self.ids), dtype=torch.long), mask], dim=1)
        return {"input_ids": rest.to(device), "past_key_values": repeat_cache(self.cache, len(rests)),
                "attention_mask": full.to(device), "position_ids": position_ids_for(mask, len(self.ids)).to(device)}


@torch.no_grad()
def run_prefix(lm, ids: Sequence[int], repeat: int = 1, body_only: bool = False) -> SharedPrefix:
    """Run ``ids`` once (``repeat`` rows; ``body_only``: the decoder body, no unembedding) under whatever hooks are
    active and keep the cache."""
    if not ids:
        return SharedPrefix([], None)
    runner = lm.model.model if body_only else lm.model
    kwargs = {} if body_only else {"logits_to_keep": 1}
    prefix = torch.tensor([list(ids)] * repeat, device=lm.device)
    return SharedPrefix(list(ids), runner(input_ids=prefix, use_cache=True, **kwargs).past_key_values)


@torch.no_grad()
def prefix_batches(lm, prompts: Sequence[str], batch_size: int, keep: int = 1, body_only: bool = False,
                   repeat: int = 1) -> Iterator[Batch]:
    """Yield length-sorted batches of chat-formatted ``prompts`` whose forward inputs reuse the shared prefix's cache.

    ``keep`` is how many final tokens of every row must lie outside the prefix (e.g. the post-instruction
    positions). ``body_only`` runs the prefix through the decoder body (no unembedding). ``repeat > 1`` computes
    the prefix with ``repeat`` rows — for hooks that act per row, such as batched candidate directions — and
    every batch row ``r`` of prompt ``p`` then reads prefix row ``r // n_prompts_in_batch``: callers batching
    candidates lay rows out candidate-major and pass ``batch_size`` = number of prompts.
    """
    ids = lm.tokenizer(lm.format(list(prompts)), add_special_tokens=False)["input_ids"]
    yield from token_batches(lm, ids, batch_size, keep, body_only, repeat)


@torch.no_grad()
def token_batches(lm, ids: Sequence[Sequence[int]], batch_size: int, keep: int | Sequence[int] = 1,
                  body_only: bool = False, repeat: int = 1) -> Iterator[Batch]:
    """:func:`prefix_batches` for already-tokenized rows; ``keep`` may be one count per row.

    The prefix is the longest common token prefix of ``ids`` leaving ``keep[i]`` tokens of row ``i`` outside it."""
    keeps = [keep] * len(ids) if isinstance(keep, int) else list(keep)
    n_prefix = max(0, min(common_prefix_length(ids, 0), *(len(r) - k for r, k in zip(ids, keeps))))
    prefix = run_prefix(lm, ids[0][:n_prefix], repeat, body_only)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        inputs = prefix.inputs([ids[i][n_prefix:] for i in rows], lm.tokenizer.pad_token_id, lm.device, repeat)
        yield Batch(rows, inputs)
