"""``refusal-lab study``: every model, method, intervention and metric of a config, explained in report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from refusal_lab.cli.options import DeviceMapOption, OffloadFolderOption, out_dir_option
from refusal_lab.cli.tables import console, print_findings
from refusal_lab.pipeline.study import load_study_config, run_study


def study(config: Annotated[Path, typer.Option(help="StudyConfig as .toml or .json (e.g. configs/demo.toml)")],
          out: Annotated[Path, typer.Option(help="the study's directory (every model of the config: extract, "
                                            "evaluate, analyse, report.html; resumable)", callback=out_dir_option)],
          device_map: DeviceMapOption = None, offload_folder: OffloadFolderOption = None):
    """The study: every model, method, intervention and metric of a config, with geometry, figures, report.html
    and findings.json. Resumable: rerun the same command to continue."""
    run_and_report(config, out, device_map=device_map, offload_folder=offload_folder)


def run_and_report(config: Path, out: Path, **overrides: Optional[str]) -> None:
    """Run the study of ``config`` in ``out`` (``overrides``: settings given as options), then print its findings
    and the report's path."""
    report, findings = run_study(load_study_config(config, **overrides), out)
    print_findings(findings)
    console.print(f"report: {report}")
