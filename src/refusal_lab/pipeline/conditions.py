"""The conditions a run offers the evaluator: every intervention kind × scope built from the run's artifacts, each
beside its random controls.

Each condition applies the artifact its method chose *at that scope* (``selected_at`` = the condition's scope); where
the method was not selected at that scope, the artifact chosen at its first selected scope (``selected_at`` says
which), and where its selection chose nothing, its best-bypass candidate (``selection = closest``). Controls: a
random direction of the same norm (ActAdd, ablation) or a random orthonormal basis of the same rank (projections)
at the same sites and scope, ``control_seeds`` seeds (none for LEACE, which has no random analogue). Every
condition carries its table (``comparison`` or ``rank_k_sweep``) and builder settings in ``params``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import NonNegativeInt, PositiveInt

from refusal_lab.core.artifacts import Direction, MethodArtifacts, Provenance
from refusal_lab.core.config import ConfigModel
from refusal_lab.core.vocabulary import (
    ADDITIVE_KINDS,
    ARTIFACT_OF,
    CENTERABLE_KINDS,
    FLIP_VARIANTS,
    KINDS,
    SCOPES,
    FlipVariant,
    Kind,
    Scope,
    Site,
)
from refusal_lab.evaluation.condition import Condition
from refusal_lab.fitting.inlp_order import reorder_inlp
from refusal_lab.fitting.subspace import stack_subspace
from refusal_lab.interventions.factory import build_intervention
from refusal_lab.methods.registry import get_method
from refusal_lab.pipeline.artifacts import chosen_for_scope, fit_stage, load_candidates, methods_dir
from refusal_lab.pipeline.rundir import RunDirectory

_NO_CONTROL = ("leace",)


class PlanConfig(ConfigModel):
    """Which conditions to build from a run (``[compare]`` in a run config)."""

    kinds: list[Kind] = list(KINDS)
    scopes: list[Scope] = list(SCOPES)
    actadd_scales: list[float] | None = None  # ±each; None: the scale the direction's selection induced at
    actadd_scopes: list[Scope] = ["layer"]
    flip_alpha: float = 2.0
    flip_variants: list[FlipVariant] = list(FLIP_VARIANTS)
    rank_k: PositiveInt = 1  # k of the rank-k row in the main table (the sweep covers every k)
    subspace_ks: list[PositiveInt] = []  # subspace rows with the stack's leading k rows (empty: one row, every row)
    # where every intervention acts (None: the factory's defaults, resid_pre for ActAdd and the input flip, all
    # three sites otherwise)
    sites: list[Site] | None = None
    rank_k_orders: list[Literal["iteration", "dim_share"]] = ["iteration", "dim_share"]  # what "first k" means
    sweep_scopes: list[Scope] = ["layer"]
    sweep_max_k: NonNegativeInt | None = None  # default: the INLP rank; 0 (or no rank-k kind) turns it off
    sweep_controls: bool = True
    center_variants: bool = True  # also nullspace / flip / rank-k through the training mean
    control_seeds: NonNegativeInt = 1


def selected_scale(artifact) -> float:
    """The ActAdd scale the artifact's selection induced refusal at; 1 where it found none (a closest candidate
    records NaN) or was never selected."""
    induced_at = artifact.provenance.extra.get("selection", {}).get("induce_scale")
    return float(induced_at) if induced_at and math.isfinite(induced_at) else 1.0


def random_like(artifact, seed: int):
    """The control for ``artifact``: a random direction of the same norm, or a random orthonormal basis of the same
    rank (seeded; recorded in provenance)."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    p = artifact.provenance
    provenance = Provenance(p.model, "random", p.hidden_size, p.layer, p.position, p.data_hash,
                            {**p.extra, "seed": seed})
    if isinstance(artifact, Direction):
        noise = torch.randn(artifact.vector.shape, generator=generator)
        return Direction(noise / noise.norm() * artifact.norm, provenance)
    return stack_subspace(list(torch.randn(artifact.rank, artifact.basis.shape[1], generator=generator)), provenance)


def _full_stack(run_dir: Path, hidden_size: int):
    """The subspace method's whole stack (its candidate with the most rows), or None where it was not fitted."""
    if not RunDirectory(run_dir).done(fit_stage("subspace")):
        return None
    candidates = load_candidates(methods_dir(run_dir) / "subspace", hidden_size)
    return max(candidates.values(), key=lambda stack: stack.rank) if candidates else None


def _label(params: dict, center: bool) -> str:
    return "".join(f",{n}={v:g}" if isinstance(v, float | int) else f",{n}={v}"
                   for n, v in params.items() if v is not None) + (",centered" if center else "")


@dataclass
class _Planner:
    """Collects conditions for one run (see :func:`plan_conditions`)."""

    run_dir: Path
    config: PlanConfig
    n_layers: int
    hidden_size: int
    ranked_layers: list[int]
    fits: object = None
    conditions: list[Condition] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def _build(self, kind: str, scope: str, artifact, layer: int | None, params: dict, center: bool) -> list:
        method = ARTIFACT_OF[kind]
        position = artifact.provenance.position
        extra = {"center": True, "centers": self.fits.centers(position)} if center and self.fits else (
            {"center": True} if center else {})
        if kind == "leace" and scope != "layer" and self.fits is not None:
            extra["erasers"] = self.fits.erasers(position)
        if self.config.sites is not None:
            extra["sites"] = self.config.sites
        return build_intervention(kind, MethodArtifacts(**{"inlp" if method == "flip" else method: artifact}),
                                  layer=layer, scope=scope, n_layers=self.n_layers, ranked_layers=self.ranked_layers,
                                  **{n: v for n, v in params.items() if n != "order"}, **extra)

    def add(self, table: str, kind: str, scope: str, artifact, selected_at: str, center: bool = False,
            **params) -> None:
        """One condition (and its controls) applying ``artifact`` as ``kind`` at ``scope``."""
        if params.get("order"):  # rank-k: the INLP rows in the named order (refusal_lab.fitting.inlp_order)
            artifact = reorder_inlp(artifact, params["order"])
        p, method = artifact.provenance, ARTIFACT_OF[kind]
        layer = p.layer if p.layer is not None else (p.extra.get("layers") or [None])[0]
        name = f"{kind}[{scope}{_label(params, center)}]"
        selection = p.extra.get("selection", {})
        # the validation KL selection measured, where this condition applies exactly what selection applied
        same = (kind == get_method(method).kind and scope == selected_at and not center
                and (params.get("scale") or -1) < 0)
        goal = "induce" if kind in ADDITIVE_KINDS and (params.get("scale") or 0) > 0 else "bypass"
        shared = {"table": table, "layer": layer, "position": p.position, "k": params.get("k"),
                  "alpha": params.get("alpha"), "variant": params.get("flip_variant"), "order": params.get("order"),
                  "scale": params.get("scale"), "center": center, "selected_at": selected_at}
        self.conditions.append(Condition(
            name, self._build(kind, scope, artifact, layer, params, center), kind, scope, method, goal,
            params=shared | {"selection": selection.get("status", "selected"),
                             "kl_val": selection.get("kl", math.nan) if same else math.nan}))
        if kind in _NO_CONTROL or (table == "rank_k_sweep" and not self.config.sweep_controls):
            return
        for seed in range(self.config.control_seeds):
            control = random_like(artifact.truncate(params["k"]) if params.get("k") else artifact, seed)
            self.conditions.append(Condition(
                f"{name}~random{seed}", self._build(kind, scope, control, layer, params, center), kind, scope,
                "random", goal, True, name, seed, params=shared | {"selection": "selected", "kl_val": math.nan}))

    def add_kind(self, kind: str, scope: str, artifact, selected_at: str, center: bool) -> None:
        """The main-table conditions of one kind at one scope: ± scales, flip variants, subspace ks, rank-k orders."""
        config = self.config
        if kind in ADDITIVE_KINDS:
            for s in config.actadd_scales or [selected_scale(artifact)]:
                for sign in (1.0, -1.0):
                    self.add("comparison", kind, scope, artifact, selected_at, scale=float(sign * s))
        elif kind == "flip":
            for variant in config.flip_variants:
                self.add("comparison", kind, scope, artifact, selected_at, center, alpha=config.flip_alpha,
                         flip_variant=variant)
        elif kind == "subspace" and config.subspace_ks:
            stack = _full_stack(self.run_dir, self.hidden_size) or artifact  # selection may have kept fewer rows
            for k in dict.fromkeys(min(k, stack.rank) for k in config.subspace_ks):
                self.add("comparison", kind, scope, stack, selected_at, k=k)
        elif kind == "rank-k":
            for order in config.rank_k_orders:
                self.add("comparison", kind, scope, artifact, selected_at, center, k=config.rank_k, order=order)
        else:
            self.add("comparison", kind, scope, artifact, selected_at, center)

    def add_sweep(self) -> None:
        """The rank-k sweep: INLP's first k directions for every k up to ``sweep_max_k`` (default its rank)."""
        for scope in self.config.sweep_scopes:
            inlp, selected_at = chosen_for_scope(self.run_dir, "inlp", scope, self.hidden_size)
            if inlp is None:
                self.skipped.append("rank-k sweep: no INLP artifact")
                return
            for order in self.config.rank_k_orders:
                for k in range(1, min(self.config.sweep_max_k or inlp.rank, inlp.rank) + 1):
                    self.add("rank_k_sweep", "rank-k", scope, inlp, selected_at, k=k, order=order)


def plan_conditions(run_dir: Path, config: PlanConfig, n_layers: int, hidden_size: int,
                    ranked_layers: list[int], fits=None) -> tuple[list[Condition], list[str]]:
    """Every condition of both tables (baseline first), and the kinds skipped for want of an artifact. ``fits`` (a
    :class:`~refusal_lab.methods.registry.FitContext`) gives the affine maps (centred variants, LEACE) one fit per
    layer at multi-layer scopes; without it those stay at the layer they were fitted at."""
    planner = _Planner(Path(run_dir), config, n_layers, hidden_size, ranked_layers, fits,
                       [Condition("baseline", params={"table": "both"})])
    for kind in config.kinds:
        scopes = config.actadd_scopes if kind in ADDITIVE_KINDS else config.scopes
        centers = [False, True] if config.center_variants and kind in CENTERABLE_KINDS else [False]
        for scope in scopes:
            artifact, selected_at = chosen_for_scope(run_dir, ARTIFACT_OF[kind], scope, hidden_size)
            if artifact is None:
                planner.skipped.append(f"{kind}: no {ARTIFACT_OF[kind]} artifact in {run_dir}; run `refusal-lab "
                                       f"extract --method {ARTIFACT_OF[kind]}`")
                break
            for center in centers:
                planner.add_kind(kind, scope, artifact, selected_at, center)
    if config.sweep_max_k != 0 and "rank-k" in config.kinds:
        planner.add_sweep()
    return planner.conditions, planner.skipped


__all__ = ["PlanConfig", "plan_conditions", "random_like", "selected_scale"]
