"""The evaluation store: one embedded DuckDB file per results directory (``RESULTS_DIR/results.duckdb``).

Tables
  ``items``        per-item values of one *unit* of work — ``unit`` = sha256 of (model fingerprint, intervention
                   hash, metric, judge, dataset, max_new_tokens, data hash, and the layer of a per-layer metric) —
                   written one chunk at a time, so an interrupted run loses at most the chunk in flight and a rerun skips every stored item.
  ``generations``  greedy token ids per (intervention hash, side, item), written per batch.
  ``results``      one row per unit (keyed by it; a store with an older layout has its rows dropped and remade on
                   the next run, since they derive from the items): value, 95 % interval, baseline, difference
                   and Δ with intervals, and the control comparison.

:meth:`ResultsStore.export` writes ``results.parquet`` (DuckDB's own Parquet writer).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

RESULT_COLUMNS = {
    "unit": "VARCHAR", "model": "VARCHAR", "model_fingerprint": "VARCHAR", "method": "VARCHAR",
    "intervention": "VARCHAR",
    "intervention_hash": "VARCHAR", "kind": "VARCHAR", "scope": "VARCHAR", "params": "VARCHAR", "goal": "VARCHAR",
    "control": "BOOLEAN", "control_for": "VARCHAR", "seed": "INTEGER",
    "metric": "VARCHAR", "judge": "VARCHAR", "dataset": "VARCHAR", "max_new_tokens": "INTEGER", "layer": "INTEGER",
    "data_hash": "VARCHAR", "n": "INTEGER",
    "value": "DOUBLE", "ci_low": "DOUBLE", "ci_high": "DOUBLE",
    "baseline": "DOUBLE", "baseline_ci_low": "DOUBLE", "baseline_ci_high": "DOUBLE",
    "difference": "DOUBLE", "difference_ci_low": "DOUBLE", "difference_ci_high": "DOUBLE",
    "delta": "DOUBLE", "delta_ci_low": "DOUBLE", "delta_ci_high": "DOUBLE",
    "vs_control": "DOUBLE", "vs_control_ci_low": "DOUBLE", "vs_control_ci_high": "DOUBLE",
    "specific": "BOOLEAN",
}


def unit_key(**parts) -> str:
    """The key of one unit of work: sha256 over its parts as canonical JSON (first 24 hex digits)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class ResultsStore:
    """A DuckDB database of per-item values, generations and result rows (see the module docstring)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "results.duckdb"
        import duckdb  # here, not at the top: only a store needs it (a faster CLI start)

        self.db = duckdb.connect(str(self.path))
        columns = ", ".join(f"{name} {kind}" for name, kind in RESULT_COLUMNS.items())
        self.db.execute("CREATE TABLE IF NOT EXISTS items (unit VARCHAR, item VARCHAR, value DOUBLE, "
                        "tokens DOUBLE, PRIMARY KEY (unit, item))")
        self.db.execute("CREATE TABLE IF NOT EXISTS generations (intervention_hash VARCHAR, side VARCHAR, "
                        "item VARCHAR, max_new_tokens INTEGER, token_ids INTEGER[], "
                        "PRIMARY KEY (intervention_hash, side, item, max_new_tokens))")
        stored = [name for name, *_ in self.db.execute("SELECT column_name FROM information_schema.columns "
                                                        "WHERE table_name = 'results'").fetchall()]
        if stored and stored != list(RESULT_COLUMNS):  # an older layout: the rows are derived, so remade on run
            self.db.execute("DROP TABLE results")
        self.db.execute(f"CREATE TABLE IF NOT EXISTS results ({columns}, PRIMARY KEY (unit))")

    def close(self) -> None:
        self.db.close()

    # --- per-item values -----------------------------------------------------------------------------------------

    def stored_items(self, unit: str) -> dict[str, tuple[float, float | None]]:
        """``item → (value, tokens)`` already stored for ``unit``."""
        rows = self.db.execute("SELECT item, value, tokens FROM items WHERE unit = ?", [unit]).fetchall()
        return {item: (value, tokens) for item, value, tokens in rows}

    def add_items(self, unit: str, items: Sequence[str], values: Sequence[float],
                  tokens: Sequence[float] | None = None) -> None:
        """Store one chunk of per-item values (one transaction: all of the chunk or none of it)."""
        frame = pd.DataFrame({"unit": unit, "item": list(items), "value": [float(v) for v in values],
                              "tokens": [float(t) for t in tokens] if tokens is not None else None})
        self.db.execute("INSERT OR REPLACE INTO items SELECT unit, item, value, tokens FROM frame")

    # --- generations ---------------------------------------------------------------------------------------------

    def stored_generations(self, intervention_hash: str, side: str, max_new_tokens: int) -> dict[str, list[int]]:
        rows = self.db.execute("SELECT item, token_ids FROM generations WHERE intervention_hash = ? AND side = ? "
                               "AND max_new_tokens = ?", [intervention_hash, side, max_new_tokens]).fetchall()
        return {item: list(ids) for item, ids in rows}

    def add_generations(self, intervention_hash: str, side: str, max_new_tokens: int, items: Sequence[str],
                        token_ids: Iterable[Sequence[int]]) -> None:
        frame = pd.DataFrame({"intervention_hash": intervention_hash, "side": side, "item": list(items),
                              "max_new_tokens": max_new_tokens, "token_ids": [list(map(int, t)) for t in token_ids]})
        self.db.execute("INSERT OR REPLACE INTO generations SELECT intervention_hash, side, item, max_new_tokens, "
                        "token_ids FROM frame")

    # --- result rows ---------------------------------------------------------------------------------------------

    def add_results(self, rows: Sequence[dict]) -> None:
        if not rows:
            return
        frame = pd.DataFrame([{c: row.get(c) for c in RESULT_COLUMNS} for row in rows])
        self.db.execute(f"INSERT OR REPLACE INTO results SELECT {', '.join(RESULT_COLUMNS)} FROM frame")

    def results(self) -> pd.DataFrame:
        return self.db.execute("SELECT * FROM results ORDER BY metric, judge, dataset, max_new_tokens, control, "
                               "intervention").df()

    def export(self) -> Path:
        """Write every result row to ``results.parquet`` beside the database."""
        target = self.directory / "results.parquet"
        self.db.execute(f"COPY results TO '{target.as_posix()}' (FORMAT PARQUET)")
        return target
