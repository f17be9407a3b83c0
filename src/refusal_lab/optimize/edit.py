"""A per-layer weighted abliteration as one typed, saveable object, applied with hooks or baked into weights.

``Abliteration`` holds unit directions ``r̂ [L, d]`` and weights ``w [L]`` for the attention and the MLP writers.
On a write ``y [..., d]`` of layer ``l``: ``y ↦ y − w_l (y·r̂_l) r̂_l`` (hooks at ``attn_out`` / ``mlp_out``, a
:class:`~refusal_lab.interventions.base.Projection` with ``α = w_l`` placed once per write). Baked into weights
(``W [d, d_in]`` of ``o_proj`` / ``down_proj``, bias ``b [d]``): ``W ← W − w r̂ (r̂ᵀ W)``, ``b ← b − w (b·r̂) r̂``;
since ``y = W x + b`` this is the same map, so hooked and edited models agree up to rounding (tested). As a rank-1
LoRA per writer: ``B = −w r̂ [d, 1]``, ``A = r̂ᵀ W [1, d_in]``, ``W + B A``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from refusal_lab.errors import RefusalLabError
from refusal_lab.interventions.base import Projection
from refusal_lab.interventions.hooks import Intervention
from refusal_lab.io import atomic_path
from refusal_lab.optimize.space import COMPONENTS, SITE_OF, AbliterationParams, layer_directions


@dataclass
class Abliteration:
    """Directions ``[L, d]`` and per-component weights ``[L]``; ``meta``: model, data hash, parameters, trial."""

    directions: torch.Tensor
    weights: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: AbliterationParams, differences: torch.Tensor, harmless_means: torch.Tensor,
                    n_layers: int, **meta) -> Abliteration:
        """The edit ``params`` fix, given a direction table and the harmless means ``[L, P, d]``
        (:func:`~refusal_lab.optimize.space.layer_directions`)."""
        return cls(layer_directions(differences, harmless_means, params, n_layers), params.weights(n_layers),
                   {"params": json.loads(params.model_dump_json()), **meta})

    @property
    def n_layers(self) -> int:
        return self.directions.shape[0]

    def interventions(self, dense: bool = False) -> list[Intervention]:
        """One hook per (layer, writer) with a non-zero weight (``dense``: every one, weight 0 = identity, so
        candidates scored side by side share hook points)."""
        return [Intervention(Projection(self.directions[l][None], float(self.weights[c][l])), layers=(l,),
                             sites=(SITE_OF[c],), placement="writes", name=f"abliterate-{c}-{l}")
                for l in range(self.n_layers) for c in COMPONENTS if dense or float(self.weights[c][l]) != 0.0]

    def check(self, lm) -> None:
        if self.n_layers != lm.n_layers or self.directions.shape[1] != lm.hidden_size:
            raise RefusalLabError(f"this abliteration is for {self.n_layers} layers of size "
                                  f"{self.directions.shape[1]} (model {self.meta.get('model', '?')!r}), but the "
                                  f"model has {lm.n_layers} layers of size {lm.hidden_size}")
        if lm.adapter.post_sublayer_norms:
            raise RefusalLabError(f"{lm.adapter.family} normalises block outputs after o_proj/down_proj, so an edit "
                                  "of those weights is not an edit of the residual writes; not supported")

    def writers(self, lm):
        """``(layer, component, linear, r̂ [d] float32, w)`` for every writer with a non-zero weight."""
        self.check(lm)
        getters = {"attn": lm.adapter.attn_out_proj, "mlp": lm.adapter.mlp_out_proj}
        for l, layer in enumerate(lm.adapter.layers(lm.model)):
            for c in COMPONENTS:
                w = float(self.weights[c][l])
                if w != 0.0:
                    yield l, c, getters[c](layer), self.directions[l].float(), w

    @torch.no_grad()
    def apply_to_weights(self, lm) -> None:
        """Edit ``lm.model`` in place (see module docstring)."""
        for _, _, linear, r, w in self.writers(lm):
            weight = linear.weight
            r = r.to(weight.device)
            W = weight.float()
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
            tmp.write_text(json.dumps({"kind": "abliteration", **self.meta}, indent=2))
        return stem

    @classmethod
    def load(cls, path: str | Path) -> Abliteration:
        stem = Path(path).with_suffix("")
        tensors = load_file(str(stem.with_suffix(".safetensors")))
        meta = json.loads(stem.with_suffix(".json").read_text())
        meta.pop("kind", None)
        return cls(tensors["directions"], {c: tensors[f"weights.{c}"] for c in COMPONENTS}, meta)
