"""A run directory you can trust: it records what it was made from, and which of its stages finished.

    RUN_DIR/fingerprint.json   model (name, source, weights hash, dtype), data hash and config, each stored when
                               first known and checked on every later use
    RUN_DIR/stages/NAME.done   written (atomically, with timing) only when stage NAME's body finished

A stage's outputs count only once its marker exists: read them after :meth:`RunDirectory.done`, never because a
file is there (an interrupted stage can leave some of its files written and others not).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from refusal_lab.core.config import canonical_json
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.io import write_json
from refusal_lab.models.identity import model_identity

_STAGE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _differences(stored: Any, given: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like values, each as ``key = stored, not given``."""
    if isinstance(stored, dict) and isinstance(given, dict):
        return [d for key in sorted(set(stored) | set(given), key=str)
                for d in _differences(stored.get(key), given.get(key), f"{prefix}.{key}" if prefix else str(key))]
    return [] if stored == given else [f"{prefix} = {stored!r}, not {given!r}"]


class RunDirectory:
    """The folder of one run: its fingerprint and its stage markers (files written through refusal_lab.core.io)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise RefusalLabError(f"{self.path} is a file, not a run directory; pass a directory as --out")

    @property
    def fingerprint_path(self) -> Path:
        return self.path / "fingerprint.json"

    def fingerprint(self) -> dict[str, Any]:
        """The stored fingerprint (``{}`` for a new directory)."""
        if not self.fingerprint_path.exists():
            return {}
        try:
            return json.loads(self.fingerprint_path.read_text())
        except json.JSONDecodeError:
            raise RefusalLabError(f"{self.fingerprint_path} is damaged (not JSON); use a new --out") from None

    def check(self, lm=None, data_hash: str | None = None, config: BaseModel | None = None, *,
              same_dtype: bool = True) -> None:
        """Raise :class:`RefusalLabError` naming the first given part that differs from the stored fingerprint.

        Parts left None, and parts not stored yet, are not compared. The model is compared by weights hash (a
        model of the same architecture and size but other weights fails) and, if ``same_dtype`` (off for commands
        that only read the run's artifacts, like generate), by dtype; its name is not compared, so the same
        weights reached by another spec (bundled name or directory) pass."""
        self._compare(self.fingerprint(), self._parts(lm, data_hash, config), same_dtype)

    def bind(self, lm=None, data_hash: str | None = None, config: BaseModel | None = None) -> None:
        """:meth:`check` the given parts, then store those not stored yet (creates the directory). Call it with
        the config and data hash before loading the model, and with the model once it is loaded."""
        stored = self.fingerprint()
        given = self._parts(lm, data_hash, config)
        self._compare(stored, given)
        if any(key not in stored for key in given):
            write_json(self.fingerprint_path, {**given, **stored})

    @staticmethod
    def _parts(lm, data_hash: str | None, config: BaseModel | None) -> dict[str, Any]:
        parts: dict[str, Any] = {}
        if lm is not None:
            parts["model"] = model_identity(lm)
        if data_hash is not None:
            parts["data_hash"] = data_hash
        if config is not None:
            parts["config"] = json.loads(canonical_json(config))
        return parts

    def _compare(self, stored: dict[str, Any], given: dict[str, Any], same_dtype: bool = True) -> None:
        if "model" in stored and "model" in given:
            old, new = stored["model"], given["model"]
            if old["weights"] != new["weights"]:
                raise RefusalLabError(f"{self.path} was created for model {old['name']} (weights {old['weights']}), "
                                      f"not {new['name']} (weights {new['weights']}): use a new --out")
            if same_dtype and old["dtype"] != new["dtype"]:
                raise RefusalLabError(f"{self.path} was created with model {old['name']} in {old['dtype']}, not "
                                      f"{new['dtype']}: set dtype = \"{old['dtype']}\" to resume, or use a new --out")
        if "data_hash" in stored and "data_hash" in given and stored["data_hash"] != given["data_hash"]:
            raise RefusalLabError(f"{self.path} was created for data {stored['data_hash']}, not "
                                  f"{given['data_hash']} (other prompts or splits): use a new --out")
        if "config" in stored and "config" in given:
            diffs = _differences(stored["config"], given["config"])
            if diffs:
                more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
                raise RefusalLabError(f"{self.path} was created with config {'; '.join(diffs[:3])}{more}: use the "
                                      f"same settings to resume, or a new --out")

    # --- stages --------------------------------------------------------------------------------------------------

    def _marker(self, name: str) -> Path:
        if not _STAGE_NAME.fullmatch(name):
            raise ValueError(f"stage name {name!r} must match {_STAGE_NAME.pattern}")
        return self.path / "stages" / f"{name}.done"

    def done(self, name: str) -> bool:
        """Whether stage ``name`` finished (its outputs are complete)."""
        return self._marker(name).exists()

    def record(self, name: str) -> dict[str, Any] | None:
        """A finished stage's marker: ``{"stage", "started", "seconds", "info"}``; None if it did not finish."""
        marker = self._marker(name)
        return json.loads(marker.read_text()) if marker.exists() else None

    def require(self, name: str, command: str = "the command that makes it") -> None:
        """Raise :class:`RefusalLabError` unless stage ``name`` finished."""
        if not self.done(name):
            raise RefusalLabError(f"{self.path}: stage {name!r} has not finished (never run, or interrupted); "
                                  f"run {command} with --out {self.path} first")

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Run the body as stage ``name``; its marker is written only if the body finishes.

        Any marker from before is removed on entry, so a stage re-run and interrupted counts as unfinished. The
        body may fill the yielded dict (JSON values), stored as the marker's ``info`` (e.g. per-step timings)."""
        marker = self._marker(name)
        marker.unlink(missing_ok=True)
        info: dict[str, Any] = {}
        started, start = datetime.now(timezone.utc), time.perf_counter()
        yield info
        write_json(marker, {"stage": name, "started": started.isoformat(timespec="seconds"),
                            "seconds": time.perf_counter() - start, "info": info})
