"""The typer app and the console entry point: every command registered (one module each under
:mod:`refusal_lab.cli.commands`), and every user error turned into one line on stderr and a non-zero exit."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from refusal_lab.cli.commands.abliterate import abliterate, optimize
from refusal_lab.cli.commands.compare import compare
from refusal_lab.cli.commands.evaluate import evaluate
from refusal_lab.cli.commands.findings import findings
from refusal_lab.cli.commands.generate import generate
from refusal_lab.cli.commands.models import models
from refusal_lab.cli.commands.run import extract, run
from refusal_lab.cli.commands.study import study
from refusal_lab.core.errors import RefusalLabError

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Locate, erase, flip and induce refusal in chat language models with linear methods.")
COMMANDS = {"models": models, "study": study, "findings": findings, "run": run, "extract": extract,
            "generate": generate, "compare": compare, "abliterate": abliterate, "optimize": optimize,
            "evaluate": evaluate}  # help order
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)

INTERRUPTED = 130  # the shell's exit status for SIGINT
# click's usage errors (bad option values, unknown commands), reached through typer, which may vendor click
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _exit(message: str, code: int) -> None:
    """One line on stderr (never wrapped), then exit with ``code``."""
    Console(stderr=True).print(message, highlight=False, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    """Console entry point. Every user error is one line on stderr: a RefusalLabError exits 1, a bad option 2
    (click's usage errors, raised here instead of printed as a box); Ctrl-C exits 130 with the hint to resume
    (click turns KeyboardInterrupt into exit code 130 without a word, so it is handled here)."""
    hint = "interrupted; rerun the same command to resume from the run directory"
    try:
        code = app(standalone_mode=False)
    except RefusalLabError as error:
        _exit(f"[red]error:[/] {escape(str(error))}", 1)
    except ClickException as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # the help is already printed
            sys.exit(error.exit_code)
        command = f" (see '{error.ctx.command_path} --help')" if getattr(error, "ctx", None) else ""
        _exit(f"[red]error:[/] {escape(error.format_message().rstrip('.'))}{command}", error.exit_code)
    except KeyboardInterrupt:
        _exit(hint, INTERRUPTED)
    if code == INTERRUPTED:
        _exit(hint, INTERRUPTED)
    sys.exit(code or 0)
