"""Where a run directory keeps each method's artifacts, and what each intervention kind reads.

    RUN_DIR/methods/<fit>/candidates/lLLL_pP.*      a fitted candidate (layer, negative position; ``kK`` for k)
    RUN_DIR/methods/<fit>/fit.json                   the fit's summary (candidate count, settings), its last file
    RUN_DIR/methods/<method>/selection-<scope>.csv   every candidate at that scope, scores and status, best first
    RUN_DIR/methods/<method>/chosen-<scope>.*        the chosen artifact (scores in ``provenance.extra["selection"]``)
    RUN_DIR/ranking.json                             DiM's layer ranking, best first (``top50``, subspace stacking)

``<fit>`` is the method whose fit provides the candidates (``flip`` reuses ``inlp``'s). Each of these is the output
of a stage of :class:`~refusal_lab.pipeline.rundir.RunDirectory` (:func:`fit_stage`, :func:`selection_stage`,
:data:`RANKING_STAGE`), and is read here only once that stage's marker says it finished; the selection's marker
records whether it chose a candidate, its closest candidate where it did not, and its timings.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from refusal_lab.core.artifacts import MethodArtifacts, load_artifact
from refusal_lab.core.io import read_json
from refusal_lab.core.vocabulary import METHOD_NAMES, SCOPES
from refusal_lab.methods.registry import get_method
from refusal_lab.pipeline.rundir import RunDirectory

CLOSEST = "closest: no candidate passed the filters"
RANKING_STAGE = "ranking"  # the stage that writes RUN_DIR/ranking.json


def ranked_layers(run_dir: str | Path) -> list[int]:
    """DiM's layer ranking, best first (``RUN_DIR/ranking.json``), once its stage finished (else an error naming the
    command that makes it)."""
    RunDirectory(run_dir).require(RANKING_STAGE, "`refusal-lab extract` (it selects DiM first)")
    return [layer for layer, _ in read_json(Path(run_dir) / "ranking.json")["ranked"]]


def fit_stage(fit: str) -> str:
    """The stage that fits ``fit``'s candidates (``RUN_DIR/methods/<fit>/``)."""
    return f"fit-{fit}"


def selection_stage(method: str, scope: str) -> str:
    """The stage that selects ``method`` at ``scope`` (its table and chosen artifact)."""
    return f"select-{method}-{scope}"


def methods_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "methods"


def candidate_stem(root: Path, layer: int | None, position: int | None, k: int | None = None) -> Path:
    """Where a fit (``root = RUN_DIR/methods/<fit>``) keeps its candidate ``(layer, position, k)``."""
    name = f"k{k:03d}" if layer is None else f"l{layer:03d}_p{position}"
    return root / "candidates" / name


def save_candidates(root: Path, candidates: dict[tuple, object]) -> None:
    for (layer, position, k), artifact in candidates.items():
        artifact.save(candidate_stem(root, layer, position, k))


def clear_fit(root: Path) -> None:
    """Remove what an earlier, unfinished fit left in ``root`` (its summary first, then its candidates)."""
    (root / "fit.json").unlink(missing_ok=True)
    shutil.rmtree(root / "candidates", ignore_errors=True)


def load_candidates(root: Path, hidden_size: int | None = None) -> dict[tuple, object]:
    found = {}
    for meta in sorted((root / "candidates").glob("*.json")):
        artifact = load_artifact(meta, hidden_size=hidden_size)
        p = artifact.provenance
        k = int(meta.stem[1:]) if meta.stem.startswith("k") else None
        found[(p.layer if k is None else None, p.position if k is None else None, k)] = artifact
    return found


def chosen_stem(run_dir: str | Path, method: str, scope: str) -> Path:
    return methods_dir(run_dir) / method / f"chosen-{scope}"


def selection_table(run_dir: str | Path, method: str, scope: str) -> Path:
    return methods_dir(run_dir) / method / f"selection-{scope}.csv"


def clear_selection(run_dir: str | Path, method: str, scope: str) -> None:
    """Remove what an earlier, unfinished selection of ``method`` at ``scope`` left (its table, chosen artifact)."""
    selection_table(run_dir, method, scope).unlink(missing_ok=True)
    stem = chosen_stem(run_dir, method, scope)
    for suffix in (".json", ".safetensors"):
        stem.with_suffix(suffix).unlink(missing_ok=True)


def load_chosen(run_dir: str | Path, method: str, scope: str, hidden_size: int | None = None,
                closest: bool = False):
    """The artifact ``method`` chose at ``scope``; with ``closest``, where its selection chose nothing, its
    best-bypass candidate marked ``provenance.extra["selection"]["status"] = CLOSEST``. None if the selection did
    not finish, or chose nothing (without ``closest``) or scored no candidate."""
    finished = RunDirectory(run_dir).record(selection_stage(method, scope))
    if finished is None:
        return None
    if finished["info"].get("chosen"):
        return load_artifact(chosen_stem(run_dir, method, scope), hidden_size=hidden_size)
    record = finished["info"].get("closest")
    if not closest or record is None:
        return None
    fit_root = methods_dir(run_dir) / get_method(method).fitted_by
    artifact = load_artifact(candidate_stem(fit_root, record["layer"], record["position"], record["k"]), hidden_size)
    artifact.provenance.extra["selection"] = {**record, "status": CLOSEST}
    return artifact


def load_artifacts(run_dir: str | Path, scope: str, hidden_size: int | None = None,
                   names: Sequence[str] | None = None, closest: bool = False) -> MethodArtifacts:
    """The chosen artifact of each method (``names``, default all) at ``scope``; missing ones stay None."""
    artifacts = MethodArtifacts(source=str(run_dir))
    for name in names or METHOD_NAMES:
        setattr(artifacts, name, load_chosen(run_dir, name, scope, hidden_size, closest))
    return artifacts


def selected_scopes(run_dir: str | Path, method: str) -> list[str]:
    """The scopes ``method`` was selected at in ``run_dir`` (finished selections only), sorted by name."""
    directory = RunDirectory(run_dir)
    return sorted(scope for scope in SCOPES if directory.done(selection_stage(method, scope)))


def chosen_for_scope(run_dir: str | Path, method: str, scope: str, hidden_size: int | None = None):
    """``(artifact, selected_at)``: what ``method`` chose at ``scope``, else at its first selected scope, else (a
    selection that chose nothing) its closest candidate; ``(None, None)`` if it was never selected."""
    scopes = selected_scopes(run_dir, method)
    for at in ([scope] if scope in scopes else []) + scopes:
        artifact = load_chosen(run_dir, method, at, hidden_size, closest=True)
        if artifact is not None:
            return artifact, at
    return None, None
