"""Weight orthogonalization: bake an idempotent projection ``P = I − VᵀV`` into every matrix that writes to the
residual stream, so the edited model needs no hooks (Arditi et al. 2024, generalised from rank 1 to rank k).

Writers and their edits (activations are rows, ``y = x Wᵀ + b`` with ``W [d, d_in]``):
  * token embeddings ``E [vocab, d]`` (rows are residual vectors):      ``E ← E P = E − (E Vᵀ) V``
  * attention ``o_proj`` and MLP ``down_proj`` weights ``W [d, d_in]``: ``W ← P W = W − Vᵀ (V W)``
  * their biases ``b [d]``:                                             ``b ← b P``
Tied input/output embeddings are untied first so the unembedding is left unchanged. Each matrix is edited on its
own device (a device map spreads them); offloaded ones are refused (:func:`~refusal_lab.models.placement.
require_in_memory`: an edit of a copy read in for one forward would be lost).

Because every write lies in range(P) and P is idempotent, the residual stream never leaves range(P): the edited
model equals the hooked model that projects ``resid_pre``, ``attn_out`` and ``mlp_out`` of every layer. A flip
(α ≠ 1), an activation addition or an affine eraser is not an idempotent projection and cannot be baked.

:func:`bake_interventions` bakes a whole condition's hooks: the projection above, or projections ``P_α = I − α VᵀV``
(any α, e.g. an optimize trial's weighted abliteration) placed on block writes only, each folded into its writer,
``W ← P_α W = W − α Vᵀ (V W)``, ``b ← b P_α``, in hook order. :func:`unbakeable` says why a condition cannot be:
a map that is not a :class:`Projection` (ActAdd, LEACE, a centred or norm-preserving map), or one acting on the
residual stream itself (``resid_pre``) anywhere but at every layer and site (flips, single-layer scopes).
Gemma2/Gemma3 normalise each block's output *after* ``o_proj`` / ``down_proj`` (post-sublayer norms), so a
projection cannot be folded into their weights either.
"""

from __future__ import annotations

import torch
from torch import nn

from collections.abc import Sequence

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.vocabulary import SITES
from refusal_lab.interventions.base import Projection
from refusal_lab.interventions.hooks import Intervention
from refusal_lab.models.placement import require_in_memory


@torch.no_grad()
def _project_rows(weight: torch.Tensor, basis: torch.Tensor, alpha: float = 1.0) -> None:
    basis = basis.to(weight.device)  # each weight is edited on its own device (a device map spreads them)
    w = weight.float()
    weight.copy_(w - alpha * (w @ basis.T) @ basis)


@torch.no_grad()
def _project_columns(weight: torch.Tensor, basis: torch.Tensor, alpha: float = 1.0) -> None:
    basis = basis.to(weight.device)
    w = weight.float()
    weight.copy_(w - alpha * basis.T @ (basis @ w))


def _untie_embeddings(model: nn.Module) -> None:
    output = model.get_output_embeddings()
    if output is not None and output.weight is model.get_input_embeddings().weight:
        output.weight = nn.Parameter(output.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    model._tied_weights_keys = {}  # transformers must not re-tie them when saving / loading


def orthogonalize_weights(lm, projection: Projection) -> None:
    """Edit ``lm.model`` in place so it behaves as if ``projection`` were applied at every write (see module)."""
    if not isinstance(projection, Projection) or not projection.idempotent:
        raise RefusalLabError(
            "only idempotent projections (ablation, nullspace, rank-k, subspace) can be baked into weights; "
            "a flip (alpha != 1), activation addition or LEACE eraser must be applied with hooks"
        )
    if lm.adapter.post_sublayer_norms:
        raise RefusalLabError(
            f"{lm.adapter.family} normalises block outputs after o_proj/down_proj, so a projection cannot be baked "
            "into its weights exactly; use hooks (refusal-lab generate --intervention ...) instead"
        )
    writers = [linear for layer in lm.adapter.layers(lm.model)
               for linear in (lm.adapter.attn_out_proj(layer), lm.adapter.mlp_out_proj(layer))]
    embedding = lm.adapter.embedding(lm.model)
    tied = [lm.model.get_output_embeddings()] if getattr(lm.model.config, "tie_word_embeddings", False) else []
    require_in_memory(lm.model, [embedding, *writers, *[m for m in tied if m is not None]],
                      "weight orthogonalization")
    basis = projection.basis.detach().to(dtype=torch.float32)
    _untie_embeddings(lm.model)
    _project_rows(embedding.weight, basis)
    for linear in writers:
        _project_columns(linear.weight, basis)
        if linear.bias is not None:
            _project_rows(linear.bias[None, :], basis)


def _everywhere(lm, interventions: Sequence[Intervention]) -> bool:
    """One idempotent projection at every layer and site: :func:`orthogonalize_weights`' exact equivalent."""
    (only, *rest) = interventions
    return (not rest and only.transform.idempotent and only.placement == "each"
            and only.layers == tuple(range(lm.n_layers)) and set(only.sites) == set(SITES))


def unbakeable(lm, interventions: Sequence[Intervention]) -> str | None:
    """Why ``interventions`` (one condition's hooks) cannot be baked into ``lm``'s weights; None where they can
    (no hooks; one idempotent projection at every layer and site; projections on block writes only)."""
    if not interventions:
        return None
    if lm.adapter.post_sublayer_norms:
        return (f"{lm.adapter.family} normalises block outputs after o_proj/down_proj, so no hook can be baked into "
                "its weights exactly; apply it with hooks")
    other = sorted({type(iv.transform).__name__ for iv in interventions if type(iv.transform) is not Projection})
    if other:
        return (f"{', '.join(other)} is not a projection (ActAdd, LEACE and centred or norm-preserving maps are "
                "affine or additive): it must be applied with hooks")
    if any("resid_pre" in iv.sites for iv in interventions) and not _everywhere(lm, interventions):
        return ("a projection of the residual stream (resid_pre) bakes into weights only at every layer and site, "
                "i.e. built with scope 'all' and all sites; a flip or a narrower scope must be applied with hooks")
    return None


def bake_interventions(lm, interventions: Sequence[Intervention]) -> None:
    """Edit ``lm.model`` in place so that, hook-free, it computes what it computes under ``interventions`` (module
    docstring); a :class:`RefusalLabError` with :func:`unbakeable`'s reason where that is impossible."""
    reason = unbakeable(lm, interventions)
    if reason is not None:
        raise RefusalLabError(f"cannot bake into weights: {reason}")
    if not interventions:
        return
    if "resid_pre" in interventions[0].sites:
        orthogonalize_weights(lm, interventions[0].transform)
        return
    layers = lm.adapter.layers(lm.model)
    writer = {"attn_out": lm.adapter.attn_out_proj, "mlp_out": lm.adapter.mlp_out_proj}
    edits = [(writer[site](layers[layer]), iv.transform) for iv in interventions for layer, site in iv.hook_points()]
    require_in_memory(lm.model, [linear for linear, _ in edits], "baking the interventions")
    for linear, projection in edits:
        basis = projection.basis.detach().float()
        _project_columns(linear.weight, basis, projection.alpha)
        if linear.bias is not None:
            _project_rows(linear.bias[None, :], basis, projection.alpha)
