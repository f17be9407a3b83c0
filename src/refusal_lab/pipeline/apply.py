"""A run's chosen artifacts as hooks (``generate``) or as a permanent weight edit (``abliterate``)."""

from __future__ import annotations

from pathlib import Path

from refusal_lab.core.artifacts import MethodArtifacts
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.vocabulary import ARTIFACT_OF, check_kind
from refusal_lab.interventions.factory import build_intervention
from refusal_lab.interventions.weights import bake_interventions
from refusal_lab.interventions.hooks import Intervention
from refusal_lab.pipeline.artifacts import chosen_for_scope, selected_scopes
from refusal_lab.pipeline.rundir import RunDirectory


def run_interventions(lm, run_dir: str | Path, kind: str, scope: str | None = None, **params) -> list[Intervention]:
    """The hooks for intervention ``kind`` with the artifact its method chose in ``run_dir`` at ``scope`` (default:
    the first scope it was selected at); ``params`` go to :func:`~refusal_lab.methods.build_intervention`."""
    kind = check_kind(kind)
    if kind == "none":
        return []
    RunDirectory(run_dir).check(lm=lm, same_dtype=False)
    method = ARTIFACT_OF[kind]
    scopes = selected_scopes(run_dir, method)
    if not scopes:
        raise RefusalLabError(f"{run_dir} has no {method} selection; run `refusal-lab extract --method {method} "
                              f"--out {run_dir}` first")
    artifact, _ = chosen_for_scope(Path(run_dir), method, scope or scopes[0], lm.hidden_size)
    if artifact is None:
        raise RefusalLabError(f"the {method} selection in {run_dir} scored no candidate; nothing to apply")
    slot = "inlp" if method == "flip" else method
    return build_intervention(kind, MethodArtifacts(**{slot: artifact}), scope=scope, n_layers=lm.n_layers,
                              **params)


def abliterate(lm, run_dir: str | Path, out: str | Path, kind: str = "ablate") -> Path:
    """Bake ``kind`` (an idempotent projection: ablate, nullspace, rank-k, subspace) at every layer and site into
    ``lm``'s weights and save a plain transformers directory at ``out``."""
    interventions = run_interventions(lm, run_dir, kind, scope="all")
    bake_interventions(lm, interventions)
    out = Path(out)
    lm.model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    return out
