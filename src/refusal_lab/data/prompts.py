"""Prompt and PromptSet: labelled requests with provenance, and the label constants."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, overload

from refusal_lab.core.errors import RefusalLabError

HARMFUL = "harmful"
HARMLESS = "harmless"
LABELS = (HARMFUL, HARMLESS)


def check_label(label: str, context: str = "") -> str:
    """``label`` if it is one of :data:`LABELS`, else a RefusalLabError (``context`` says where)."""
    if label not in LABELS:
        raise RefusalLabError(f"unknown label {label!r}{context}; use 'harmful' or 'harmless'")
    return label


def text_key(text: str) -> str:
    """The key for de-duplication and overlap checks: case- and whitespace-insensitive."""
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class Prompt:
    """One request with its label ("harmful" or "harmless") and provenance."""

    text: str
    label: str
    category: str = ""
    source: str = ""
    pair_id: str = ""

    def __post_init__(self) -> None:
        check_label(self.label, " on a prompt")
        if not isinstance(self.text, str) or not self.text.strip():
            raise RefusalLabError("a prompt has empty text; remove empty prompts from the input")


class PromptSet(Sequence[Prompt]):
    """An immutable, ordered collection of :class:`Prompt` with a name and a stable content hash."""

    __slots__ = ("_prompts", "name")

    def __init__(self, prompts: Iterable[Prompt] = (), name: str = "") -> None:
        items = tuple(prompts)
        for p in items:
            if not isinstance(p, Prompt):
                raise TypeError(f"PromptSet holds Prompt objects, got {type(p).__name__}")
        self._prompts: tuple[Prompt, ...] = items
        self.name = name

    @classmethod
    def from_texts(cls, texts: Iterable[str], label: str, *, name: str = "",
                   source: str = "", category: str = "") -> PromptSet:
        """Build a set from bare strings that all share one label."""
        return cls((Prompt(t, label, category=category, source=source) for t in texts), name=name)

    @property
    def prompts(self) -> tuple[Prompt, ...]:
        return self._prompts

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self._prompts]

    @property
    def labels(self) -> list[str]:
        return [p.label for p in self._prompts]

    @property
    def categories(self) -> list[str]:
        """Distinct non-empty categories, sorted."""
        return sorted({p.category for p in self._prompts if p.category})

    def data_hash(self) -> str:
        """First 16 hex chars of a sha256 over the (label, text) sequence; stable across runs."""
        h = hashlib.sha256()
        for p in self._prompts:
            h.update(json.dumps([p.label, p.text], ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()[:16]

    def filter(self, label: str | None = None, *, category: str | None = None,
               source: str | None = None) -> PromptSet:
        """Prompts matching every given criterion (``None`` means any)."""
        if label is not None:
            check_label(label)
        keep = (p for p in self._prompts
                if (label is None or p.label == label)
                and (category is None or p.category == category)
                and (source is None or p.source == source))
        return PromptSet(keep, name=self.name)

    def dedupe(self) -> PromptSet:
        """Drop repeated texts (case/whitespace-insensitive), keeping the first occurrence."""
        seen: set[str] = set()
        out = []
        for p in self._prompts:
            key = text_key(p.text)
            if key not in seen:
                seen.add(key)
                out.append(p)
        return PromptSet(out, name=self.name)

    def renamed(self, name: str) -> PromptSet:
        return PromptSet(self._prompts, name=name)

    def to_records(self) -> list[dict[str, str]]:
        return [asdict(p) for p in self._prompts]

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]], name: str = "") -> PromptSet:
        return cls((Prompt(**{k: r.get(k, "") for k in ("text", "label", "category", "source",
                                                          "pair_id")}) for r in records),
                   name=name)

    def __len__(self) -> int:
        return len(self._prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self._prompts)

    @overload
    def __getitem__(self, index: int) -> Prompt: ...

    @overload
    def __getitem__(self, index: slice) -> PromptSet: ...

    def __getitem__(self, index: int | slice) -> Prompt | PromptSet:
        if isinstance(index, slice):
            return PromptSet(self._prompts[index], name=self.name)
        return self._prompts[index]

    def __add__(self, other: PromptSet) -> PromptSet:
        if not isinstance(other, PromptSet):
            return NotImplemented
        return PromptSet(self._prompts + other._prompts, name=self.name or other.name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PromptSet):
            return NotImplemented
        return self._prompts == other._prompts and self.name == other.name

    def __hash__(self) -> int:
        return hash((self._prompts, self.name))

    def __repr__(self) -> str:
        counts = {lab: sum(p.label == lab for p in self._prompts) for lab in LABELS}
        return (f"PromptSet(name={self.name!r}, n={len(self)}, harmful={counts[HARMFUL]}, "
                f"harmless={counts[HARMLESS]}, hash={self.data_hash()})")
