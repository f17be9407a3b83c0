"""``refusal-lab findings``: a finished study's verdicts recomputed from its stored tables and checked against
its findings.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import pandas as pd
import typer

from refusal_lab.cli.tables import console, print_table
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.pipeline.recheck import recheck


def _agree(check) -> str:
    return {None: "not compared", True: "yes", False: "no: " + ", ".join(check.differences)}[check.agrees]


def findings(
    run_dir: Annotated[Path, typer.Option("--run", help="a finished study's directory (from refusal-lab study)")],
    judge: Annotated[Optional[str], typer.Option(help="another stored judge (default: the study's; then the "
                                                 "verdicts are reported, not compared)")] = None,
    tokens: Annotated[Optional[int], typer.Option(min=1, help="another stored generation length (default: the "
                                                  "longest; then the verdicts are reported, not compared)")] = None,
):
    """Recompute every verdict of a finished study from its stored items and tables (no model is loaded) and
    compare them with its findings.json: exit 1, naming the findings, when any disagrees."""
    result = recheck(run_dir, judge=judge, tokens=tokens)
    print_table(pd.DataFrame([{"model": c.model, "finding": c.id, "stored verdict": c.stored or "—",
                               "recomputed verdict": c.recomputed or "—", "agree": _agree(c)}
                              for c in result.checks]), f"findings of {run_dir} (judge {result.judge})")
    if result.disagreeing:
        raise RefusalLabError(result.summary())
    console.print(result.summary(), soft_wrap=True, highlight=False)
