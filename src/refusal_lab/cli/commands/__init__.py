"""The commands, one module a job: models, study, run (run, extract), generate, compare, abliterate (abliterate,
optimize), evaluate. :mod:`refusal_lab.cli.app` registers them on the typer app."""
