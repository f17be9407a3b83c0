"""The intervention factory: one intervention kind and a method's artifact → hooks (see :func:`build_intervention`).

Every map acts on residual-stream row vectors ``h [..., d]`` from the right: a projection onto the orthogonal
complement of the orthonormal rows ``V [k, d]`` is ``h ↦ h − α (h Vᵀ) V = h P_α``, ``P = I − VᵀV``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from refusal_lab.core.artifacts import AffineEraser, Direction, MethodArtifacts, Subspace
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.vocabulary import (
    ADDITIVE_KINDS,
    ARTIFACT_OF,
    CENTERABLE_KINDS,
    DEFAULT_SCOPE,
    DEFAULT_SITES,
    FLIP_VARIANTS,
    SITES,
    check_kind,
    check_scope,
)
from refusal_lab.interventions.affine import CenteredProjection, centered_interventions, eraser_interventions
from refusal_lab.interventions.base import Addition, Projection
from refusal_lab.interventions.hooks import Intervention, scope_layers

Artifact = Direction | Subspace | AffineEraser  # what MethodArtifacts.get returns


def build_intervention(kind: str, artifacts: MethodArtifacts, layer: int | None = None, scope: str | None = None,
                       sites: Sequence[str] | None = None, alpha: float | None = None, k: int | None = None,
                       scale: float | None = None, ranked_layers: Sequence[int] | None = None,
                       n_layers: int | None = None, center: bool = False, *, flip_variant: str | None = None,
                       erasers: Mapping[int, AffineEraser] | None = None,
                       centers: Mapping[int, torch.Tensor] | None = None,
                       center_positions: Sequence[int] | None = None) -> list[Intervention]:
    """The hooks for one intervention kind (the single factory behind the CLI, selection and the comparison).

    ``kind``: ``none`` → ``[]``; ``ablate`` → ``Projection(r̂_DiM)``; ``actadd`` → ``Addition(v_DiM, scale)``;
    ``nullspace`` → ``Projection(V, 1)``; ``flip`` → ``Projection(V, alpha)`` (default α = 2); ``rank-k`` →
    ``Projection(V_k)`` (default k = 1); ``leace`` → per scoped layer, that layer's affine eraser at ``resid_pre``
    and its linear part at the write sites (:mod:`refusal_lab.interventions.affine`); ``subspace`` →
    ``Projection(QR basis)`` (leading k rows when ``k`` is given); ``classifier-actadd`` → ``Addition(v_clf,
    scale)`` with ``‖v_clf‖ = ‖v_DiM‖``. ``scale`` (default 1) signs ActAdd: > 0 induces refusal, < 0 bypasses it.

    ``layer`` defaults to the artifact's extraction layer. ``scope`` (``layer``/``top50``/``all``; default ``all``
    for ablate and subspace, as in the seed pipeline, else ``layer``) expands it via
    :func:`~refusal_lab.interventions.hooks.scope_layers` with ``ranked_layers`` (default: recorded with the
    artifacts). ``sites`` default: ``resid_pre`` for the ActAdd kinds and the ``input`` flip, all three otherwise.

    ``flip_variant`` (flip only; default ``input``; recorded in the name, ``flip(alpha=2,variant=input)``):
    ``input`` reflects the residual stream once, at ``resid_pre`` of the first scoped layer, and nothing else;
    ``writes`` also reflects every ``attn_out`` / ``mlp_out`` write of the scoped layers (so it also negates the
    model's response to the reflected state). They differ at every scope, ``layer`` included.

    ``center=True`` (nullspace, flip, rank-k): project / reflect through a training mean ``c``, ``h ↦ c + (h −
    c) P_α`` (:class:`~refusal_lab.interventions.affine.CenteredProjection`), instead of through the origin. On
    the 0.5B model the linear flip moved harmless activations *away* from the harmful cluster (span(V) holds ~20 %
    of the activations' common offset); the centred flip swaps the clusters.

    Affine maps are placed only at the layer they were fitted at (else a ``RefusalLabError``): ``leace`` uses
    ``erasers[j]`` (:func:`~refusal_lab.fitting.leace.fit_leace_per_layer`) at each scoped layer ``j`` that has
    one (a layer without one has nothing to erase and is left alone), else the artifact's eraser, which fits only
    its own layer. A centred map uses ``centers[j]`` (each layer's own training
    mean, e.g. :func:`~refusal_lab.fitting.leace.per_layer_means`; ``center_positions``: the positions they
    were taken at, recorded as ``valid_positions``), else the artifact's recorded centre at its own layer. Centred
    nullspace / rank-k need a centre at every scoped layer, a centred flip at the first scoped layer only.
    """
    kind = check_kind(kind)
    if kind == "none":
        return []
    artifact = artifacts.get(ARTIFACT_OF[kind])
    scope = check_scope(scope or DEFAULT_SCOPE.get(kind, "layer"))
    variant = _flip_variant(kind, flip_variant)
    placement = variant if kind == "flip" else "each"
    sites = _sites(kind, placement, sites)
    target = _Target(_scoped_layers(kind, artifact, artifacts, scope, layer, n_layers, ranked_layers), sites,
                     placement)
    _check_affine_options(kind, center, centers, erasers)
    centres = _Centres(artifact, centers, center_positions) if center else None
    return _kind_interventions(kind, artifact, target, centres, alpha=alpha, k=k, scale=scale, variant=variant,
                               erasers=erasers)


@dataclass(frozen=True)
class _Target:
    """Where one kind's hooks go: the scoped layers (sorted), the sites, and the placement (``each`` / ``input``
    / ``writes``, see :mod:`refusal_lab.interventions.hooks`)."""

    layers: tuple[int, ...]
    sites: tuple[str, ...]
    placement: str


@dataclass(frozen=True)
class _Centres:
    """The centres ``c`` of a centred map: ``centers[j]``, layer ``j``'s own training mean (taken at
    ``positions``), where given; else the centre recorded with the artifact, fitted at the artifact's layer."""

    artifact: Subspace
    centers: Mapping[int, torch.Tensor] | None
    positions: Sequence[int] | None

    def projection(self, basis: torch.Tensor, alpha: float, layer: int) -> CenteredProjection:
        """``h ↦ c + (h − c) P_α`` for ``layer``; the artifact's centre keeps its own fitted layer, so the hooks
        refuse it at any other."""
        if self.centers is not None and layer in self.centers:
            positions = None if self.positions is None else tuple(self.positions)
            return CenteredProjection(basis, alpha, self.centers[layer].float(), layer, positions)
        recorded, p = self.artifact.provenance.extra.get("center"), self.artifact.provenance
        if recorded is None:
            raise RefusalLabError("this INLP artifact records no centre (training mean); re-extract it with "
                                  "`refusal-lab extract --method inlp` or pass centers= to use center=True")
        return CenteredProjection(basis, alpha, torch.tensor(recorded, dtype=torch.float32), p.layer,
                                  None if p.position is None else (p.position,))


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise RefusalLabError(f"--{name} must be a finite number, got {value}")
    return float(value)


def _flip_variant(kind: str, flip_variant: str | None) -> str:
    """The flip variant (default ``input``); giving one for any other kind is an error."""
    if flip_variant is not None and kind != "flip":
        raise RefusalLabError(f"flip_variant applies to flip only, not {kind}")
    variant = flip_variant or "input"
    if variant not in FLIP_VARIANTS:
        raise RefusalLabError(f"unknown flip variant {variant!r}; variants are {', '.join(FLIP_VARIANTS)}")
    return variant


def _sites(kind: str, placement: str, sites: Sequence[str] | None) -> tuple[str, ...]:
    """``sites`` checked and deduplicated in order; default ``resid_pre`` for placement ``input``, else the
    kind's default (``resid_pre`` for ActAdd, all three otherwise)."""
    default_sites = ("resid_pre",) if placement == "input" else DEFAULT_SITES.get(kind, SITES)
    sites = tuple(sites) if sites else default_sites
    bad = [s for s in sites if s not in SITES]
    if bad:
        raise RefusalLabError(f"unknown site(s) {bad}; sites are {', '.join(SITES)}")
    return tuple(dict.fromkeys(sites))


def _scoped_layers(kind: str, artifact: Artifact, artifacts: MethodArtifacts, scope: str, layer: int | None,
                   n_layers: int | None, ranked_layers: Sequence[int] | None) -> tuple[int, ...]:
    """The sorted layers ``scope`` expands ``layer`` to (default: the artifact's layer), with the model's
    ``n_layers`` and ``ranked_layers`` (defaults: recorded with the artifacts)."""
    n_layers = n_layers or artifacts.n_layers()
    if n_layers is None and scope == "all":
        raise RefusalLabError("scope 'all' needs the model's number of layers (n_layers)")
    if layer is None:
        layer = _recorded_layer(kind, artifact, scope)
    if n_layers is not None and layer is not None and not 0 <= layer < n_layers:
        raise RefusalLabError(f"layer {layer} is out of range for a model with {n_layers} layers")
    ranked = list(ranked_layers) if ranked_layers is not None else artifacts.ranked_layers()
    return tuple(sorted(scope_layers(scope, layer if layer is not None else 0, n_layers or 0, ranked)))


def _recorded_layer(kind: str, artifact: Artifact, scope: str) -> int | None:
    """The artifact's extraction layer (a stacked subspace: its first layer); required at scope ``layer``."""
    layer = artifact.provenance.layer
    if layer is None and kind == "subspace":
        layer = (artifact.provenance.extra.get("layers") or [None])[0]
    if layer is None and scope == "layer":
        raise RefusalLabError(f"the {kind} artifact records no layer; pass one (--layer) or use --scope all")
    return layer


def _check_affine_options(kind: str, center: bool, centers: Mapping | None, erasers: Mapping | None) -> None:
    """``center`` only for the centerable kinds, ``centers`` only with ``center``, ``erasers`` only for leace."""
    if center and kind not in CENTERABLE_KINDS:
        raise RefusalLabError(f"center applies to nullspace, flip and rank-k, not {kind}")
    if centers is not None and not center:
        raise RefusalLabError("centers= gives the centres of a centred map; pass center=True with it")
    if erasers is not None and kind != "leace":
        raise RefusalLabError(f"erasers= applies to leace only, not {kind}")


def _kind_interventions(kind: str, artifact: Artifact, target: _Target, centres: _Centres | None, *,
                        alpha: float | None, k: int | None, scale: float | None, variant: str,
                        erasers: Mapping[int, AffineEraser] | None) -> list[Intervention]:
    """The hooks of one kind at ``target`` (each kind's map: :func:`build_intervention`)."""
    if kind == "ablate":
        return _projection(artifact.unit[None, :], 1.0, "ablation", target, centres)
    if kind in ADDITIVE_KINDS:
        s = _finite("scale", 1.0 if scale is None else scale)
        return [Intervention(Addition(artifact.vector, s), layers=target.layers, sites=target.sites,
                             name=f"{kind}({s:+g})")]
    if kind == "nullspace":
        return _projection(artifact.basis, 1.0, "nullspace", target, centres)
    if kind == "flip":
        a = _finite("alpha", 2.0 if alpha is None else alpha)
        return _projection(artifact.basis, a, f"flip(alpha={a:g},variant={variant})", target, centres)
    if kind == "rank-k":
        kk = 1 if k is None else k
        return _projection(artifact.truncate(kk).basis, 1.0, f"rank-{kk}", target, centres)
    if kind == "subspace":
        basis = artifact.basis if k is None else artifact.truncate(k).basis
        return _projection(basis, 1.0, f"subspace(k={basis.shape[0]})", target, centres)
    if kind == "leace":
        return _leace(artifact, target, erasers)
    raise AssertionError(kind)  # pragma: no cover


def _projection(basis: torch.Tensor, alpha: float, name: str, target: _Target,
                centres: _Centres | None) -> list[Intervention]:
    """``h ↦ h P_α`` at ``target``; with ``centres``, ``h ↦ c_j + (h − c_j) P_α`` about each mapped layer j's
    centre (every scoped layer for placement ``each``, else the first)."""
    if centres is None:
        return [Intervention(Projection(basis, alpha), layers=target.layers, sites=target.sites, name=name,
                             placement=target.placement)]
    mapped = target.layers if target.placement == "each" else target.layers[:1]
    maps = {j: centres.projection(basis, alpha, j) for j in mapped}
    return centered_interventions(maps, target.layers, target.sites, target.placement, name=f"centered-{name}")


def _leace(artifact: AffineEraser, target: _Target, erasers: Mapping[int, AffineEraser] | None
           ) -> list[Intervention]:
    """Each scoped layer's own eraser ``h ↦ h − ((h − b) Rᵀ) Lᵀ``: ``erasers[j]`` where given (a layer without
    one is left alone), else the artifact's, valid only at the layer it was fitted at."""
    chosen = ({j: artifact for j in target.layers} if erasers is None
              else {j: erasers[j] for j in target.layers if j in erasers})
    if not chosen:
        raise RefusalLabError(f"no LEACE eraser was fitted at any of layers {list(target.layers)}")
    return eraser_interventions(chosen, target.sites)
