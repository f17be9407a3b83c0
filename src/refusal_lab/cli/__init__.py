"""The command line: a thin typer app over :mod:`refusal_lab.pipeline`."""

from refusal_lab.cli.app import app, main

__all__ = ["app", "main"]
