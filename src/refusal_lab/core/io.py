"""Atomic writers for run-directory files: write ``<name>.tmp`` beside the target, then rename it into place, so
a reader (or a resumed run) never sees a half-written file."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` only if the block finishes (creates the
    parent folders; an interrupted write leaves ``path`` as it was and no temporary file behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, payload) -> None:
    """``payload`` as indented JSON (``str`` for anything JSON cannot hold)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str))


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """One JSON object a line."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` as CSV without its index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def json_safe(value):
    """``value`` with NaN and ±inf as None, numpy scalars and arrays as Python values (dict keys as strings)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
