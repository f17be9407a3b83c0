"""A per-layer weighted abliteration as one typed, saveable object, applied with hooks or baked into weights.

``Abliteration`` holds unit directions ``r̂ [L, d]`` and weights ``w [L]`` for the attention and the MLP writers.
On a write ``y [..., d]`` of layer ``l``: ``y ↦ y − w_l (y·r̂_l) r̂_l`` (hooks at ``attn_out`` / ``mlp_out``, a
:class:`~refusal_lab.interventions.base.Projection` with ``α = w_l`` placed once per write). Baked into weights
(``W [d, d_in]`` of ``o_proj`` / ``down_proj``, bias ``b [d]``): ``W ← W − w r̂ (r̂ᵀ W)``, ``b ← b − w (b·r̂) r̂``;
since ``y = W x + b`` this is the same map, so hooked and edited models agree up to rounding (tested). As a rank-1
LoRA per writer: ``B = −w r̂ [d, 1]``, ``A = r̂ᵀ W [1, d_in]``, ``W + B A``.

Norm-preserving ("biprojected"; heretic's default ``row_normalization = "full"``, after grimjim's norm-preserving
biprojected abliteration): the rows ``W_i [d_in]`` (one per output coordinate) are normalised, ablated, renormalised
and given back their norms: ``Ŵ = S_in W`` with ``S_in = diag(1/‖W_i‖)``, ``W ← S_out (Ŵ − w r̂ r̂ᵀ Ŵ)`` with
``S_out = diag(‖W_i‖ / ‖(Ŵ − w r̂ r̂ᵀ Ŵ)_i‖)``; the bias is left as it is. Every factor acts on the output side, so
on a write this is ``y ↦ b + s_out ⊙ P(s_in ⊙ (y − b))`` with ``P = I − w r̂ r̂ᵀ`` (:class:`RowNormalizedAblation`,
scales from :func:`row_norm_scales`); hooked and edited models agree (tested), but the change of ``W`` is no
longer rank 1, so there is no LoRA form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.io import atomic_path
from refusal_lab.interventions.base import Projection
from refusal_lab.interventions.hooks import Intervention
from refusal_lab.models.placement import materialized, require_in_memory
from refusal_lab.search.space import COMPONENTS, SITE_OF, AbliterationParams, layer_directions


def row_norm_scales(W: torch.Tensor, r: torch.Tensor, w: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s_in, s_out) [d]`` of the norm-preserving edit of ``W [d, d_in]`` along unit ``r [d]`` with weight ``w``
    (module docstring), without forming the edited matrix: with ``a = r̂ᵀŴ`` and ``g = Ŵ aᵀ``,
    ``‖(Ŵ − w r̂ a)_i‖² = ‖Ŵ_i‖² − 2 w r_i g_i + w² r_i² ‖a‖²`` (float64)."""
    W, r = W.double(), r.double()
    norms = W.norm(dim=1).clamp_min(1e-12)
    normalized = W / norms[:, None]
    a = r @ normalized
    g = normalized @ a
    squared = (normalized * normalized).sum(1) - 2 * w * r * g + w * w * r * r * (a @ a)
    return 1 / norms, norms / squared.clamp_min(1e-24).sqrt()


@dataclass
class RowNormalizedAblation:
    """``y ↦ b + s_out ⊙ ((s_in ⊙ (y − b)) − w (ẑ·r̂) r̂)`` on a write ``y [..., d]`` (``ẑ = s_in ⊙ (y − b)``):
    the output-side form of a norm-preserving weight edit (module docstring). Not idempotent: place once per write."""

    direction: torch.Tensor  # [d], unit
    weight: float
    scale_in: torch.Tensor  # [d]
    scale_out: torch.Tensor  # [d]
    bias: torch.Tensor | None = None  # [d]
    stacking = "once"
    idempotent = False

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        r, s_in, s_out = (t.to(device=y.device, dtype=torch.float32) for t in (self.direction, self.scale_in,
                                                                             self.scale_out))
        b = self.bias.to(device=y.device, dtype=torch.float32) if self.bias is not None else 0.0
        z = (y.float() - b) * s_in
        return (b + s_out * (z - self.weight * (z @ r)[..., None] * r)).to(y.dtype)


@dataclass
class Abliteration:
    """Directions ``[L, d]`` and per-component weights ``[L]``; ``meta``: model, data hash, parameters, trial;
    ``norm_preserving``: the row-renormalised edit (module docstring) instead of the plain one."""

    directions: torch.Tensor
    weights: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    norm_preserving: bool = False

    @classmethod
    def from_params(cls, params: AbliterationParams, differences: torch.Tensor, harmless_means: torch.Tensor,
                    n_layers: int, **meta) -> Abliteration:
        """The edit ``params`` fix, given a direction table and the harmless means ``[L, P, d]``
        (:func:`~refusal_lab.search.space.layer_directions`)."""
        return cls(layer_directions(differences, harmless_means, params, n_layers), params.weights(n_layers),
                   {"params": json.loads(params.model_dump_json()), **meta}, params.norm_preserving)

    @property
    def n_layers(self) -> int:
        return self.directions.shape[0]

    def interventions(self, dense: bool = False, lm=None) -> list[Intervention]:
        """One hook per (layer, writer) with a non-zero weight (``dense``: every one, weight 0 = identity, so
        candidates scored side by side share hook points). A norm-preserving edit needs ``lm`` (its scales come
        from the writers' weights)."""
        if not self.norm_preserving:
            return [Intervention(Projection(self.directions[l][None], float(self.weights[c][l])), layers=(l,),
                                 sites=(SITE_OF[c],), placement="writes", name=f"abliterate-{c}-{l}")
                    for l in range(self.n_layers) for c in COMPONENTS if dense or float(self.weights[c][l]) != 0.0]
        if lm is None:
            raise RefusalLabError("a norm-preserving abliteration needs the model to build its hooks: "
                                  "interventions(lm=lm)")
        hooks = []
        for l, c, linear, r, w in self.writers(lm, dense=dense):
            with materialized(linear):  # an offloaded writer's weights are read in (a device map)
                s_in, s_out = row_norm_scales(linear.weight.detach().float(), r.to(linear.weight.device), w)
                bias = linear.bias.detach().float() if linear.bias is not None else None
            hooks.append(Intervention(RowNormalizedAblation(r, w, s_in.float(), s_out.float(), bias), layers=(l,),
                                      sites=(SITE_OF[c],), placement="writes", name=f"abliterate-{c}-{l}"))
        return hooks

    def check(self, lm) -> None:
        if self.n_layers != lm.n_layers or self.directions.shape[1] != lm.hidden_size:
            raise RefusalLabError(f"this abliteration is for {self.n_layers} layers of size "
                                  f"{self.directions.shape[1]} (model {self.meta.get('model', '?')!r}), but the "
                                  f"model has {lm.n_layers} layers of size {lm.hidden_size}")
        if lm.adapter.post_sublayer_norms:
            raise RefusalLabError(f"{lm.adapter.family} normalises block outputs after o_proj/down_proj, so an edit "
                                  "of those weights is not an edit of the residual writes; not supported")

    def writers(self, lm, dense: bool = False):
        """``(layer, component, linear, r̂ [d] float32, w)`` for every writer with a non-zero weight (``dense``:
        every writer)."""
        self.check(lm)
        getters = {"attn": lm.adapter.attn_out_proj, "mlp": lm.adapter.mlp_out_proj}
        for l, layer in enumerate(lm.adapter.layers(lm.model)):
            for c in COMPONENTS:
                w = float(self.weights[c][l])
                if dense or w != 0.0:
                    yield l, c, getters[c](layer), self.directions[l].float(), w

    @torch.no_grad()
    def apply_to_weights(self, lm) -> None:
        """Edit ``lm.model`` in place (see module docstring); each writer on its own device, none offloaded."""
        require_in_memory(lm.model, [linear for *_, linear, _, _ in self.writers(lm)], "the abliteration")
        for _, _, linear, r, w in self.writers(lm):
            weight = linear.weight
            r = r.to(weight.device)
            W = weight.float()
            if self.norm_preserving:
                s_in, s_out = (s.to(device=weight.device, dtype=torch.float32) for s in row_norm_scales(W, r, w))
                normalized = W * s_in[:, None]
                weight.copy_(s_out[:, None] * (normalized - w * torch.outer(r, r @ normalized)))
                continue
            weight.copy_(W - w * torch.outer(r, r @ W))
            if linear.bias is not None:
                b = linear.bias.float()
                linear.bias.copy_(b - w * (b @ r) * r)

    def save(self, path: str | Path) -> Path:
        """``<stem>.safetensors`` (directions, weights) and ``<stem>.json`` (meta)."""
        stem = Path(path).with_suffix("")
        tensors = {"directions": self.directions.float().contiguous(),
                   **{f"weights.{c}": self.weights[c].float().contiguous() for c in COMPONENTS}}
        with atomic_path(stem.with_suffix(".safetensors")) as tmp:
            save_file(tensors, str(tmp))
        with atomic_path(stem.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps({"kind": "abliteration", "norm_preserving": self.norm_preserving, **self.meta},
                                      indent=2))
        return stem

    @classmethod
    def load(cls, path: str | Path) -> Abliteration:
        stem = Path(path).with_suffix("")
        tensors = load_file(str(stem.with_suffix(".safetensors")))
        meta = json.loads(stem.with_suffix(".json").read_text())
        meta.pop("kind", None)
        norm_preserving = bool(meta.pop("norm_preserving", False))
        return cls(tensors["directions"], {c: tensors[f"weights.{c}"] for c in COMPONENTS}, meta, norm_preserving)
