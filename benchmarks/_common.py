"""Shared by the benchmark scripts: model flags and loading, timing, and the figures table.

Every script prints one :class:`Report` per figure group: the measured value beside the README's (``—`` where the
README quotes none for this model or setting), followed by the machine it ran on. A script that produces figures of
a results page takes ``--record`` (:func:`add_record_arg`) and writes them with :func:`record` into the page's records
(docs/results/data, rendered by benchmarks/render_results.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import render_results
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from refusal_lab.models.bundled import SMALLEST_MODEL
from refusal_lab.models.load import cpu_has_native_bf16, load_model

console = Console(width=None if sys.stdout.isatty() else 160)
MISSING = "—"


def add_model_args(parser: argparse.ArgumentParser, dtype: bool = True) -> argparse.ArgumentParser:
    """``--model``, ``--dtype`` (unless the script sets it), ``--threads`` and ``--quick`` (small sizes, to check a
    script end to end)."""
    parser.add_argument("--model", default=SMALLEST_MODEL, help="bundled name, HF id, model directory or .gguf")
    if dtype:
        parser.add_argument("--dtype", default="auto", help="auto (bf16 where the CPU has native bf16), bfloat16, "
                                                            "float32")
    add_run_args(parser)
    return parser


def add_run_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--threads`` and ``--quick`` alone, for scripts that load no model."""
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script, not the figure")
    return parser


def add_record_arg(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--record``: write the figures into the results page's records (docs/results/data) and re-render it."""
    parser.add_argument("--record", action="store_true",
                        help="write the measured figures into docs/results/data (the results pages' records) and "
                             "re-render the page")
    return parser


def setup(args: argparse.Namespace) -> None:
    if getattr(args, "record", False) and getattr(args, "quick", False):
        raise SystemExit("--record writes the results pages' figures and --quick measures at small sizes: drop one")
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def load(args: argparse.Namespace, dtype: str | None = None):
    """:func:`refusal_lab.models.load.load_model` with the parsed ``--model`` and ``--dtype`` (or ``dtype``)."""
    return load_model(args.model, dtype=dtype or args.dtype)


START_LOAD = os.getloadavg() if hasattr(os, "getloadavg") else ()  # taken before the script loads the machine


def machine() -> str:
    """One line: CPU model, cores, torch threads, native bf16, GPU, torch version, load average when it started."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    load = " ".join(f"{x:.1f}" for x in START_LOAD) or "?"
    return (f"{cpu}, {os.cpu_count()} cpus, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"native bf16 {'yes' if cpu_has_native_bf16() else 'no'}, {gpu}, load average at start {load}")


def timed(fn: Callable, *args, **kwargs) -> tuple[object, float]:
    """``(fn(*args, **kwargs), seconds)``."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` calls of ``fn()`` (the least disturbed by other load on a shared machine)."""
    return min(timed(fn)[1] for _ in range(max(repeats, 1)))


class Report:
    """A titled table of rows ``(measure, *values, README figure)``; ``columns`` names the values."""

    def __init__(self, title: str, columns: tuple[str, ...] = ("measured",)) -> None:
        self.title, self.columns = title, columns
        self.rows: list[tuple[str, ...]] = []

    def add(self, measure: str, *values: str, readme: str | None = None) -> None:
        if len(values) != len(self.columns):
            raise ValueError(f"row {measure!r} has {len(values)} values for columns {self.columns}")
        self.rows.append((measure, *values, readme or MISSING))

    def print(self) -> None:
        table = Table()
        table.add_column("measure")
        for column in (*self.columns, "README"):
            table.add_column(escape(column), justify="right")
        for row in self.rows:
            table.add_row(*map(escape, row))
        console.print(f"[bold]{escape(self.title)}[/bold]")
        console.print(table)
        console.print(f"ran on: {escape(machine())}\n")


def model_name(model: str) -> str:
    """A model argument's bundled name (or the last part of its path): how records name a model."""
    return model.rstrip("/").rsplit("/", 1)[-1]


def invocation() -> str:
    """The command this script runs as, less ``--record``: what a record names as the command that produced it."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(Path(__file__).resolve().parents[1])
    except ValueError:
        pass
    return shlex.join(["python", str(script), *(a for a in sys.argv[1:] if a != "--record")])


def record(page: str, key: str, figures: dict[str, str], command: str | None = None, *, model: str | None = None,
           **kwargs) -> None:
    """Write ``figures`` into record ``key`` of results page ``page`` (docs/results/data/PAGE.json) with
    ``command`` (default: this script's :func:`invocation`), today's date and this :func:`machine`, then re-render
    docs/results/PAGE.md (:func:`render_results.record`). ``model``: the record must be this model's."""
    path = render_results.record(page, key, figures, command or invocation(),
                                 model=None if model is None else model_name(model), machine=machine(), **kwargs)
    console.print(f"recorded {page}/{key}: {escape(', '.join(f'{k} = {v}' for k, v in figures.items()))} ({path})",
                  highlight=False)


def readme_figures(figures: dict[str, dict[str, str]], model: str) -> dict[str, str]:
    """The README's figures for ``model`` (matched by bundled name or a path ending in it); empty if none."""
    return figures.get(model_name(model), {})
