"""Judgements cached on disk: one append-only JSONL file per judge fingerprint under
``cache_dir() / "judgements"``, one line ``{"key", "refusal", "compliance", "coherence", "unsafe"}`` per item with
``key = sha256(fingerprint, request, response)``. Lines are appended and flushed after every batch, so an
interrupted run loses at most the batch in flight; a torn last line is ignored on reading.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from refusal_lab.evaluation.judgement import Judgement
from refusal_lab.models.bundled import cache_dir


def default_cache_dir() -> Path:
    """``refusal_lab.models.bundled.cache_dir() / "judgements"``."""
    return cache_dir() / "judgements"


class JudgeCache:
    """The cached judgements of one judge (``fingerprint``) in ``directory``."""

    def __init__(self, directory: Path, name: str, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        safe_name = "".join(c if c.isalnum() or c in "-._" else "_" for c in name)
        self.path = Path(directory) / f"{safe_name}-{fingerprint[:16]}.jsonl"
        self._entries: dict[str, Judgement] = {}
        text = self.path.read_text() if self.path.exists() else ""
        self._torn = bool(text) and not text.endswith("\n")  # the next append must start a fresh line
        for line in text.splitlines():
            try:
                row = json.loads(line)
                key = row.pop("key")
                self._entries[key] = Judgement(**row)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a line torn by an interrupted write

    def key(self, request: str, response: str) -> str:
        """sha256 of (judge fingerprint, request, response)."""
        return hashlib.sha256(json.dumps([self.fingerprint, request, response]).encode()).hexdigest()

    def get(self, key: str) -> Judgement | None:
        return self._entries.get(key)

    def put(self, keys: list[str], judgements: list[Judgement]) -> None:
        """Append one line per judgement and flush."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            if self._torn:
                handle.write("\n")
                self._torn = False
            for key, judgement in zip(keys, judgements):
                handle.write(json.dumps({"key": key, **asdict(judgement)}) + "\n")
                self._entries[key] = judgement
