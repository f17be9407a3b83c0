"""What several commands share: the run's config (from --config or a run directory), the model load, the check
that --run names a run directory, and the cap of --n-eval to the held-out prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from refusal_lab.cli.tables import console
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.models.load import load_model
from refusal_lab.pipeline.experiment import load_config


def run_config(config: Optional[Path], run_dir: Optional[Path] = None, **overrides):
    """The run's config: ``--config``, else the one saved in ``run_dir``, else defaults; then ``overrides``."""
    if config is None and run_dir is not None and (run_dir / "config.json").exists():
        config = run_dir / "config.json"
    return load_config(config, **overrides)


def load(cfg, dtype: str | None = None):
    """The config's model, in ``dtype`` (default: the config's), placed by its device map."""
    return load_model(cfg.model, dtype=dtype or cfg.dtype, device_map=cfg.device_map,
                      offload_folder=cfg.offload_folder)


def require_run_dir(run_dir: Path) -> None:
    if not (run_dir / "config.json").exists():
        raise RefusalLabError(f"{run_dir} is not a run directory (no config.json); run refusal-lab extract first")


def cap_n_eval(n_eval: Optional[int], splits) -> Optional[int]:
    """``n_eval`` capped to the held-out prompts per side of ``splits`` (one line says so when it is)."""
    available = min(len(splits.test_harmful), len(splits.test_harmless))
    if n_eval is not None and n_eval > available:
        console.print(f"n_eval {n_eval} is more than the {available} held-out prompts per side; capped to "
                      f"{available}", soft_wrap=True)
        return available
    return n_eval
