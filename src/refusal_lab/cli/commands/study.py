"""``refusal-lab study``: every model, method, intervention and metric of a config, explained in report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from refusal_lab.cli.options import out_dir_option
from refusal_lab.cli.tables import console, print_findings
from refusal_lab.pipeline.study import load_study_config, run_study


def study(config: Annotated[Path, typer.Option(help="StudyConfig as .toml or .json (e.g. configs/demo.toml)")],
          out: Annotated[Path, typer.Option(help="the study's directory (every model of the config: extract, "
                                            "evaluate, analyse, report.html; resumable)", callback=out_dir_option)]):
    """The study: every model, method, intervention and metric of a config, with geometry, figures, report.html
    and findings.json. Resumable: rerun the same command to continue."""
    run_and_report(config, out)


def run_and_report(config: Path, out: Path) -> None:
    """Run the study of ``config`` in ``out``, then print its findings and the report's path."""
    report, findings = run_study(load_study_config(config), out)
    print_findings(findings)
    console.print(f"report: {report}")
