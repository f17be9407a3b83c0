"""Deterministic, pairwise-disjoint train/val/test splits of harmful and harmless prompts."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.data.files import read_json_document
from refusal_lab.data.prompts import HARMFUL, HARMLESS, Prompt, PromptSet, text_key

SPLIT_NAMES = ("train_harmful", "train_harmless", "val_harmful", "val_harmless",
               "test_harmful", "test_harmless")
SPLITS_FORMAT = "refusal-lab-splits/1"


@dataclass
class Splits:
    """Train/val/test harmful and harmless prompt sets, pairwise disjoint."""

    train_harmful: PromptSet
    train_harmless: PromptSet
    val_harmful: PromptSet
    val_harmless: PromptSet
    test_harmful: PromptSet
    test_harmless: PromptSet
    meta: dict[str, Any] = field(default_factory=dict)

    def sets(self) -> dict[str, PromptSet]:
        """The six sets by name, in a fixed order."""
        return {n: getattr(self, n) for n in SPLIT_NAMES}

    def sizes(self) -> dict[str, int]:
        return {n: len(s) for n, s in self.sets().items()}

    def data_hash(self) -> str:
        """First 16 hex chars of a sha256 over ``meta["source"]`` (when set) and all six sets'
        hashes, in order."""
        h = hashlib.sha256()
        if "source" in self.meta:
            h.update(f"source:{self.meta['source']}\n".encode())
        for n, s in self.sets().items():
            h.update(f"{n}:{s.data_hash()}\n".encode())
        return h.hexdigest()[:16]

    def check_disjoint(self) -> None:
        """Raise RefusalLabError if any text (case/whitespace-insensitive) is in two sets."""
        owner: dict[str, str] = {}
        for n, s in self.sets().items():
            for p in s:
                key = text_key(p.text)
                prev = owner.get(key)
                if prev is not None and prev != n:
                    short = p.text if len(p.text) <= 60 else p.text[:57] + "..."
                    raise RefusalLabError(
                        f"splits overlap: {short!r} is in both {prev} and {n}; remove the "
                        f"duplicate from one set (make_splits de-duplicates for you)")
                owner[key] = n

    def save(self, path: str | Path) -> Path:
        """Write the splits (with their hash) as JSON."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": SPLITS_FORMAT, "data_hash": self.data_hash(), "meta": self.meta,
               "sets": {n: s.to_records() for n, s in self.sets().items()}}
        p.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return p

    @classmethod
    def load(cls, path: str | Path) -> Splits:
        """Read splits written by :meth:`save`; checks the stored hash and disjointness."""
        p, doc = read_json_document(path)
        if not isinstance(doc, dict) or doc.get("format") != SPLITS_FORMAT:
            raise RefusalLabError(f"{p}: not a refusal-lab splits file (format "
                                  f"{SPLITS_FORMAT}); create one with Splits.save")
        sets = doc.get("sets") or {}
        missing = [n for n in SPLIT_NAMES if n not in sets]
        if missing:
            raise RefusalLabError(f"{p}: missing split(s) {', '.join(missing)} (found: "
                                  f"{', '.join(sets) or 'none'}); regenerate the file")
        try:
            splits = cls(**{n: PromptSet.from_records(sets[n], name=n) for n in SPLIT_NAMES},
                         meta=dict(doc.get("meta") or {}))
        except TypeError as e:
            raise RefusalLabError(f"{p}: a prompt record is malformed ({e}); regenerate the "
                                  f"file with Splits.save") from e
        stored = doc.get("data_hash")
        if stored and stored != splits.data_hash():
            raise RefusalLabError(
                f"{p}: stored data_hash {stored} does not match the contents "
                f"({splits.data_hash()}), so the file was edited; regenerate it, or delete the "
                f"data_hash field to accept the edit")
        splits.check_disjoint()
        return splits


def assemble_splits(harmful: Sequence[Sequence[Prompt]], harmless: Sequence[Sequence[Prompt]],
              meta: dict[str, Any]) -> Splits:
    """Splits from (train, val, test) harmful and harmless parts, checked disjoint."""
    parts = (part for pair in zip(harmful, harmless) for part in pair)
    splits = Splits(*(PromptSet(x, name=n) for n, x in zip(SPLIT_NAMES, parts)), meta=meta)
    splits.check_disjoint()
    return splits


def _validate_labels(ps: PromptSet, label: str, what: str) -> None:
    bad = sum(p.label != label for p in ps)
    if bad:
        raise RefusalLabError(f"{bad} prompt(s) passed as {what} are labelled otherwise; pass "
                              f"harmful.filter(label='harmful') and harmless.filter("
                              f"label='harmless')")


def _prepare(harmful: PromptSet, harmless: PromptSet) -> tuple[list[Prompt], list[Prompt]]:
    _validate_labels(harmful, HARMFUL, "harmful")
    _validate_labels(harmless, HARMLESS, "harmless")
    h, b = list(harmful.dedupe()), list(harmless.dedupe())
    both = {text_key(p.text) for p in h} & {text_key(p.text) for p in b}
    if both:
        example = next(p.text for p in h if text_key(p.text) in both)
        raise RefusalLabError(f"{len(both)} text(s) are in both the harmful and the harmless set "
                              f"(e.g. {example[:60]!r}); remove them from one side")
    return h, b


def _check_counts(n_have: int, what: str, n_train: int, n_val: int, n_test: int | None) -> None:
    for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if v is not None and v < 0:
            raise RefusalLabError(f"{name}={v} is negative; ask for 0 or more prompts")
    asked = n_train + n_val + (n_test or 0)
    if n_have < asked:
        rest = f" + n_test={n_test}" if n_test is not None else ""
        raise RefusalLabError(
            f"not enough {what} prompts: {n_have} after removing duplicates, but n_train="
            f"{n_train} + n_val={n_val}{rest} = {asked} were asked; lower the sizes or add "
            f"prompts")


def _cut(items: list[Prompt], n_train: int, n_val: int, n_test: int | None
         ) -> tuple[list[Prompt], list[Prompt], list[Prompt]]:
    end = None if n_test is None else n_train + n_val + n_test
    return items[:n_train], items[n_train:n_train + n_val], items[n_train + n_val:end]


def _split_by_groups(h: list[Prompt], b: list[Prompt], n_train: int, n_val: int,
                     n_test: int | None, rng: random.Random
                     ) -> tuple[list[list[Prompt]], list[list[Prompt]]]:
    """Assign whole pair groups to splits so a pair's members share a split."""
    groups: dict[str, list[Prompt]] = {}
    for i, p in enumerate(h + b):
        groups.setdefault(f"pair:{p.pair_id}" if p.pair_id else f"single:{i}", []).append(p)
    keys = sorted(groups)  # a fixed order before shuffling: pairs do not depend on input order
    rng.shuffle(keys)
    inf = float("inf")
    caps = [[n_train, n_train], [n_val, n_val],
            [inf if n_test is None else n_test, inf if n_test is None else n_test]]
    out_h: list[list[Prompt]] = [[], [], []]
    out_b: list[list[Prompt]] = [[], [], []]
    for k in keys:
        g = groups[k]
        gh = [p for p in g if p.label == HARMFUL]
        gb = [p for p in g if p.label == HARMLESS]
        for s in range(3):
            if caps[s][0] >= len(gh) and caps[s][1] >= len(gb):
                out_h[s].extend(gh)
                out_b[s].extend(gb)
                caps[s][0] -= len(gh)
                caps[s][1] -= len(gb)
                break
    for s, (name, want) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        if want is not None and (len(out_h[s]) < want or len(out_b[s]) < want):
            raise RefusalLabError(
                f"cannot fill the {name} split with {want} harmful and {want} harmless prompts "
                f"while keeping pairs together (got {len(out_h[s])} and {len(out_b[s])}); "
                f"lower the sizes or pass keep_pairs=False")
    return out_h, out_b


def make_splits(harmful: PromptSet, harmless: PromptSet, n_train: int = 128, n_val: int = 32,
                n_test: int | None = None, seed: int = 0, keep_pairs: bool = True) -> Splits:
    """Deterministic, de-duplicated train/val/test splits (``n_test=None``: all the rest).

    With ``keep_pairs`` and prompts that carry ``pair_id`` (the built-in pairs), a pair's
    harmful and harmless members always land in the same split. Uses ``random.Random(seed)``.
    """
    h, b = _prepare(harmful, harmless)
    _check_counts(len(h), "harmful", n_train, n_val, n_test)
    _check_counts(len(b), "harmless", n_train, n_val, n_test)
    rng = random.Random(seed)
    paired = keep_pairs and any(p.pair_id for p in h) and any(p.pair_id for p in b)
    if paired:
        parts_h, parts_b = _split_by_groups(h, b, n_train, n_val, n_test, rng)
    else:
        rng.shuffle(h)
        rng.shuffle(b)
        parts_h, parts_b = _cut(h, n_train, n_val, n_test), _cut(b, n_train, n_val, n_test)
    return assemble_splits(parts_h, parts_b, {
        "kind": "matched" if paired else "independent", "seed": seed, "keep_pairs": keep_pairs,
        "n_train": n_train, "n_val": n_val, "n_test": n_test,
        "harmful_source": harmful.name, "harmless_source": harmless.name})


def unmatched_splits(harmful: PromptSet, harmless: PromptSet, n_train: int = 128,
                     n_val: int = 32, n_test: int | None = None, seed: int = 0) -> Splits:
    """Like :func:`make_splits`, but harmless prompts are shuffled independently of the harmful.

    The harmful sets are identical to ``make_splits(..., keep_pairs=True)`` with the same seed;
    the harmless sets have the same sizes but are a fresh shuffle, which breaks the pairing.
    Used to compare confound-matched with unmatched directions.
    """
    matched = make_splits(harmful, harmless, n_train, n_val, n_test, seed, keep_pairs=True)
    _, b = _prepare(harmful, harmless)
    random.Random(f"unmatched-harmless-{seed}").shuffle(b)
    sizes = (len(matched.train_harmless), len(matched.val_harmless), len(matched.test_harmless))
    return assemble_splits((matched.train_harmful, matched.val_harmful, matched.test_harmful),
                     _cut(b, *sizes), {**matched.meta, "kind": "unmatched"})

