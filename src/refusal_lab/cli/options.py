"""Option types and checks of the command-line interface: the choice enums, the --out path checks and the
options several commands share."""

from __future__ import annotations

import os
import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from refusal_lab.core.vocabulary import (
    BASELINE,
    FLIP_VARIANTS,
    KINDS,
    METHOD_NAMES,
    SCOPES,
    SITES,
)


def check_out_path(path: Optional[Path], directory: bool) -> Optional[Path]:
    """An --out path the command can write, checked before any work: not an existing file where a directory is
    needed (or the reverse), and inside a folder that accepts new entries (probed with a temporary folder)."""
    if path is None:
        return path
    if path.exists() and path.is_dir() != directory:
        raise typer.BadParameter(f"{path} is an existing {'directory' if path.is_dir() else 'file'}; pass a "
                                 f"{'directory' if directory else 'file'} path")
    folder = path if directory else path.parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise typer.BadParameter(f"{existing} is a file, so {path} cannot be created; pass another path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".refusal-lab-probe-", dir=existing))
    except OSError as error:
        raise typer.BadParameter(f"{existing} is not writable ({error.strerror}); pass another path") from None
    return path


def out_dir_option(path: Optional[Path]) -> Optional[Path]:
    return check_out_path(path, directory=True)


def out_file_option(path: Optional[Path]) -> Optional[Path]:
    return check_out_path(path, directory=False)


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A typer choice enum over ``values`` (member names with ``-`` spelt ``_``)."""
    return Enum(name, {v.replace("-", "_"): v for v in values}, type=str)


InterventionKind = _choices("InterventionKind", (BASELINE, *KINDS))
Method = _choices("Method", METHOD_NAMES)
Scope = _choices("Scope", SCOPES)
Site = _choices("Site", SITES)
FlipVariant = _choices("FlipVariant", FLIP_VARIANTS)


class EvalSet(str, Enum):
    test = "test"
    generic = "generic"
    advbench = "advbench"
    harmbench = "harmbench"


class Measure(str, Enum):
    first_token = "first-token"
    generation = "generation"
    landing = "landing"


ModelOption = Annotated[str, typer.Option("--model", "-m", help="bundled name, Hugging Face id, directory or .gguf")]
ConfigOption = Annotated[Optional[Path], typer.Option(help="RunConfig as .toml or .json")]
RunDirOption = Annotated[Optional[Path], typer.Option("--run", help="run directory (from refusal-lab extract)")]
DeviceMapOption = Annotated[Optional[str], typer.Option(
    help="place the model's modules through accelerate (models larger than one device): auto (or balanced, "
         "sequential), a JSON object {\"module\": device} (0, \"cuda:1\", \"cpu\", \"disk\") or a .json/.toml file "
         "holding one; none: one device (overrides the config's); default: the config's, else one device")]
OffloadFolderOption = Annotated[Optional[str], typer.Option(help="with --device-map: where weights placed on "
                                                            "\"disk\" are written when not read from the checkpoint")]
