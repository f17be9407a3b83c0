"""Typed, saveable direction objects.

Conventions (shared by every module): activations are row vectors ``h ∈ R^d``, a batch is ``[n, d]``.
A :class:`Direction` holds one unnormalised vector ``v ∈ R^d`` (e.g. the difference in means, used as-is for
ActAdd) and its unit vector ``r̂ = v / ‖v‖`` (used for ablation). A :class:`Subspace` holds an orthonormal basis
``V ∈ R^{k×d}`` (rows orthonormal); its orthogonal projection onto the complement is ``P = I − VᵀV`` and acts on
rows as ``h ↦ h − (h Vᵀ) V``.

Each object saves as ``<stem>.safetensors`` (tensors) plus ``<stem>.json`` (:class:`Provenance` and kind).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.vocabulary import METHOD_NAMES


@dataclass(frozen=True)
class Provenance:
    """Where an artifact came from: enough to reproduce it and to refuse applying it to the wrong model."""

    model: str
    method: str
    hidden_size: int
    layer: int | None = None
    position: int | None = None
    data_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def check_hidden_size(self, hidden_size: int) -> None:
        if hidden_size != self.hidden_size:
            raise RefusalLabError(
                f"this {self.method} artifact was extracted from {self.model!r} with hidden size {self.hidden_size}, "
                f"but the model has hidden size {hidden_size}; extract a direction for this model first "
                "(refusal-lab extract --model ...)"
            )


def _stem(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in {".safetensors", ".json"} else path


def _save(stem: Path, kind: str, tensors: dict[str, torch.Tensor], provenance: Provenance) -> Path:
    stem.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: t.detach().to("cpu", torch.float32).contiguous() for k, t in tensors.items()},
              str(stem.with_suffix(".safetensors")))
    stem.with_suffix(".json").write_text(json.dumps({"kind": kind, **asdict(provenance)}, indent=2))
    return stem


def _load(path: str | Path) -> tuple[str, dict[str, torch.Tensor], Provenance]:
    stem = _stem(path)
    meta_path, tensor_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    if not meta_path.exists() or not tensor_path.exists():
        raise RefusalLabError(f"no saved direction at {stem} (need {tensor_path.name} and {meta_path.name})")
    meta = json.loads(meta_path.read_text())
    kind = meta.pop("kind")
    return kind, load_file(str(tensor_path)), Provenance(**meta)


@dataclass
class Direction:
    """One direction ``v ∈ R^d`` (unnormalised); ``unit`` is ``v/‖v‖``."""

    vector: torch.Tensor
    provenance: Provenance

    def __post_init__(self) -> None:
        if self.vector.ndim != 1:
            raise ValueError(f"a direction is a 1-d vector, got shape {tuple(self.vector.shape)}")
        if not torch.isfinite(self.vector).all():
            raise RefusalLabError(f"{self.provenance.method} direction contains NaN/inf; check the activations")

    @property
    def unit(self) -> torch.Tensor:
        return self.vector / self.vector.norm()

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    def as_subspace(self) -> Subspace:
        """The rank-1 subspace spanned by this direction (ablation = projection onto its complement)."""
        return Subspace(self.unit[None, :], self.provenance)

    def save(self, path: str | Path) -> Path:
        return _save(_stem(path), "direction", {"vector": self.vector}, self.provenance)


@dataclass
class Subspace:
    """An orthonormal basis ``V [k, d]`` (rows); ``P_k = I − V[:k]ᵀ V[:k]`` removes the span of the first k rows.

    ``scores`` (optional, ``[k]``) go with the rows, e.g. INLP per-iteration accuracies or shares of the DiM vector.
    The row order is what rank-k means; ``provenance.extra["order"]`` names it where it was chosen (e.g. INLP's
    ``"iteration"`` / ``"dim_share"``, see :meth:`reordered`). ``"svd"`` marks an order-less basis (span only).
    """

    basis: torch.Tensor
    provenance: Provenance
    scores: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.basis.ndim != 2:
            raise ValueError(f"a subspace basis is [k, d], got shape {tuple(self.basis.shape)}")
        if not torch.isfinite(self.basis).all():
            raise RefusalLabError(f"{self.provenance.method} subspace contains NaN/inf; check the activations")

    @property
    def rank(self) -> int:
        return self.basis.shape[0]

    def truncate(self, k: int) -> Subspace:
        """The leading ``k`` basis rows (rank-k ``P_k``) in the current row order."""
        if not 1 <= k <= self.rank:
            raise RefusalLabError(f"k must be between 1 and the subspace rank {self.rank}, got {k}")
        if k < self.rank and self.provenance.extra.get("order") == "svd":
            raise RefusalLabError("this basis comes from an SVD of a projector and has no row order; truncate a "
                                  "subspace in a named order instead (e.g. INLP order 'iteration' or 'dim_share')")
        scores = None if self.scores is None else self.scores[:k]
        return Subspace(self.basis[:k], self.provenance, scores)

    def reordered(self, order_scores: torch.Tensor, name: str) -> Subspace:
        """The same span with rows sorted by ``order_scores [k]`` descending (stable: ties keep the current order).

        The sorted ``order_scores`` become ``scores`` and ``name`` goes to ``provenance.extra["order"]``, so
        ``reordered(s, name).truncate(k)`` keeps the ``k`` rows with the largest scores. ``P = I − VᵀV`` is unchanged.
        """
        order_scores = torch.as_tensor(order_scores).detach().reshape(-1).to("cpu", torch.float32)
        if order_scores.shape[0] != self.rank or not torch.isfinite(order_scores).all():
            raise RefusalLabError(f"reordering a rank-{self.rank} subspace needs {self.rank} finite scores, got "
                                  f"{order_scores.shape[0]}")
        sorted_scores, index = torch.sort(order_scores, descending=True, stable=True)
        provenance = dataclasses.replace(self.provenance, extra={**self.provenance.extra, "order": name})
        return Subspace(self.basis[index.to(self.basis.device)], provenance, sorted_scores)

    def projection_matrix(self, alpha: float = 1.0) -> torch.Tensor:
        """Dense ``P_α = αP + (1−α)I = I − α VᵀV`` ([d, d], symmetric). For tests and small d only."""
        d = self.basis.shape[1]
        eye = torch.eye(d, dtype=self.basis.dtype, device=self.basis.device)
        return eye - alpha * self.basis.T @ self.basis

    def save(self, path: str | Path) -> Path:
        tensors = {"basis": self.basis}
        if self.scores is not None:
            tensors["scores"] = self.scores
        return _save(_stem(path), "subspace", tensors, self.provenance)


@dataclass
class AffineEraser:
    """Affine idempotent eraser ``h ↦ h − ((h − bias) @ proj_right.T) @ proj_left.T``.

    ``proj_left [d, r]``, ``proj_right [r, d]``, ``bias [d]``; works on any batch ``[..., d]`` and returns the input
    dtype (computed in at least float32). Saves as kind ``"affine"``; load with ``load_artifact``.
    """

    proj_left: torch.Tensor
    proj_right: torch.Tensor
    bias: torch.Tensor
    provenance: Provenance

    def __post_init__(self) -> None:
        d = self.bias.shape[0] if self.bias.ndim == 1 else -1
        r = self.proj_left.shape[1] if self.proj_left.ndim == 2 else -1
        if d < 0 or r < 0 or self.proj_left.shape != (d, r) or self.proj_right.shape != (r, d):
            raise ValueError(
                f"affine eraser needs proj_left [d, r], proj_right [r, d], bias [d]; got "
                f"{tuple(self.proj_left.shape)}, {tuple(self.proj_right.shape)}, {tuple(self.bias.shape)}"
            )
        if not all(torch.isfinite(t).all() for t in (self.proj_left, self.proj_right, self.bias)):
            raise RefusalLabError(f"{self.provenance.method} eraser contains NaN/inf; check the activations")

    # usable directly as an ``interventions.base.Transform``: idempotent, so applied at every hook point
    idempotent: ClassVar[bool] = True
    stacking: ClassVar[str] = "each"

    @property
    def rank(self) -> int:
        """``r``: the number of erased directions (1 for a binary concept)."""
        return self.proj_left.shape[1]

    @property
    def hidden_size(self) -> int:
        return self.bias.shape[0]

    @property
    def fitted_layer(self) -> int | None:
        """The layer the eraser was fitted at: the only layer it may be placed at."""
        return self.provenance.layer

    @property
    def valid_positions(self) -> tuple[int, ...] | None:
        """The post-instruction positions (negative) it was fitted on: ``provenance.extra["valid_positions"]``,
        else ``(provenance.position,)``; None if neither is recorded."""
        recorded = self.provenance.extra.get("valid_positions")
        if recorded is not None:
            return tuple(recorded)
        return None if self.provenance.position is None else (self.provenance.position,)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(h.dtype, torch.float32)
        left, right, bias = (t.to(h.device, dtype) for t in (self.proj_left, self.proj_right, self.bias))
        x = h.to(dtype)
        return (x - ((x - bias) @ right.T) @ left.T).to(h.dtype)

    def linear_part(self) -> torch.Tensor:
        """Dense ``P = I − proj_left @ proj_right`` ``[d, d]`` (column convention: ``h ↦ b + (h − b) @ P.T``)."""
        return torch.eye(self.hidden_size, dtype=self.proj_left.dtype) - self.proj_left @ self.proj_right

    def save(self, path: str | Path) -> Path:
        tensors = {"proj_left": self.proj_left, "proj_right": self.proj_right, "bias": self.bias}
        return _save(_stem(path), "affine", tensors, self.provenance)


@dataclass
class MethodArtifacts:
    """Artifacts by method name (any may be missing); what
    :func:`~refusal_lab.interventions.factory.build_intervention` reads.
    ``flip`` falls back to ``inlp`` (both are INLP subspaces)."""

    dim: Direction | None = None
    inlp: Subspace | None = None
    flip: Subspace | None = None
    classifier: Direction | None = None
    leace: AffineEraser | None = None
    subspace: Subspace | None = None
    source: str = ""  # where they were loaded from, for error messages

    def get(self, name: str):
        artifact = getattr(self, name)
        if artifact is None and name == "flip":
            artifact = self.inlp
        if artifact is None:
            where = f" in {self.source}" if self.source else ""
            raise RefusalLabError(f"no {name} artifact{where}; run `refusal-lab extract --method {name} --out "
                                  "RUN_DIR` first")
        return artifact

    def ranked_layers(self) -> list[int]:
        """DiM-ranked layers (best first) recorded with any artifact present, for the ``top50`` scope."""
        for name in METHOD_NAMES:
            artifact = getattr(self, name)
            if artifact is not None and artifact.provenance.extra.get("ranked_layers"):
                return list(artifact.provenance.extra["ranked_layers"])
        return []

    def n_layers(self) -> int | None:
        for name in METHOD_NAMES:
            artifact = getattr(self, name)
            if artifact is not None and artifact.provenance.extra.get("n_layers"):
                return int(artifact.provenance.extra["n_layers"])
        return None


def load_artifact(path: str | Path, hidden_size: int | None = None) -> Direction | Subspace | AffineEraser:
    """Load a saved :class:`Direction`, :class:`Subspace` or ``AffineEraser`` (LEACE); with ``hidden_size`` check
    it fits the model."""
    kind, tensors, provenance = _load(path)
    if hidden_size is not None:
        provenance.check_hidden_size(hidden_size)
    if kind == "direction":
        return Direction(tensors["vector"], provenance)
    if kind == "subspace":
        return Subspace(tensors["basis"], provenance, tensors.get("scores"))
    if kind == "affine":
        return AffineEraser(tensors["proj_left"], tensors["proj_right"], tensors["bias"], provenance)
    raise RefusalLabError(f"unknown artifact kind {kind!r} in {path}")
