"""First-order (attribution-patching) estimates of how a linear projection changes the refusal score.

At every hook point ``(l, site)`` — ``resid_pre`` (the residual state entering layer l), ``attn_out`` and ``mlp_out``
(the block's writes) — let ``w`` be the activation and ``g = ∂s/∂w`` the gradient of the prompt's refusal score.
One forward and backward pass over the prompts gives ``M_{l,site} = Σ_{prompt, position} g wᵀ`` (``[d, d]``).
The map ``w ↦ w − α (w Vᵀ) V`` at that point changes ``Σ_prompts s`` by, to first order,

    Σ g · (−α (w Vᵀ) V) = −α Σ_i v_iᵀ M v_i          (v_i the orthonormal rows of V).

An intervention's estimate is the sum over its hook points, except that an idempotent projection at ``resid_pre``
of layer l is a no-op when layer l−1's input and both its writes are projected too (the stream is already in the
complement), so a projection at every layer and site costs ``M_{0,resid_pre} + Σ_l (M_{l,attn} + M_{l,mlp})`` —
the embedding and every write, as in weight orthogonalization. The estimate ranks candidates before they are
scored for real; it is not a score itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from refusal_lab.interventions.base import Projection
from refusal_lab.interventions.hooks import Intervention
from refusal_lab.interventions.scoring import refusal_scores
from refusal_lab.models.forward import position_ids_for


class AttributionPrior:
    """``M_{l,site}`` for every layer and site from one forward + backward pass over ``prompts``."""

    def __init__(self, lm, prompts: Sequence[str], batch_size: int = 8) -> None:
        d, layers = lm.hidden_size, lm.adapter.layers(lm.model)
        self.n_prompts = len(prompts)
        points = [(i, site) for i in range(len(layers)) for site in ("resid_pre", "attn_out", "mlp_out")]
        self.matrices = {point: torch.zeros(d, d, dtype=torch.float32) for point in points}
        captured: dict[tuple[int, str], torch.Tensor] = {}

        def pre_hook(index):
            def hook(module, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                if index == 0:  # the embedding: a leaf, so no gradient flows into the parameters
                    hidden = hidden.detach().requires_grad_()
                captured[(index, "resid_pre")] = hidden
                if index == 0:
                    return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
            return hook

        def write_hook(index, site):
            def hook(module, args, output):
                captured[(index, site)] = output[0] if isinstance(output, tuple) else output
            return hook

        handles = []
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
            handles.append(lm.adapter.attn_writer(layer).register_forward_hook(write_hook(i, "attn_out")))
            handles.append(lm.adapter.mlp_writer(layer).register_forward_hook(write_hook(i, "mlp_out")))
        try:
            with torch.enable_grad():
                for start in range(0, len(prompts), batch_size):
                    captured.clear()
                    batch = lm.tokenize(list(prompts[start : start + batch_size]))
                    logits = lm.model(**batch, position_ids=position_ids_for(batch["attention_mask"]),
                                      use_cache=False, logits_to_keep=1).logits[:, -1, :]
                    total = refusal_scores(torch.log_softmax(logits.float(), -1), lm.refusal_token_ids).sum()
                    keys = list(captured)
                    grads = torch.autograd.grad(total, [captured[k] for k in keys], allow_unused=True)
                    for key, grad in zip(keys, grads):
                        if grad is not None:
                            w = captured[key].detach().reshape(-1, d).float()
                            self.matrices[key] += grad.reshape(-1, d).float().T @ w
        finally:
            for handle in handles:
                handle.remove()

    def estimate(self, interventions: Sequence[Intervention]) -> float | None:
        """First-order change of ``Σ s`` under ``interventions``; None unless every transform is a linear
        :class:`~refusal_lab.interventions.base.Projection` (other maps get no prior)."""
        total = 0.0
        for intervention in interventions:
            transform = intervention.transform
            if type(transform) is not Projection:
                return None
            points = set(intervention.hook_points())
            basis = transform.basis.float()
            for layer, site in points:
                if site == "resid_pre" and transform.idempotent and layer > 0 and all(
                        (layer - 1, s) in points for s in ("resid_pre", "attn_out", "mlp_out")):
                    continue  # already in the complement: a no-op
                m = self.matrices[(layer, site)]
                total -= transform.alpha * float(torch.einsum("kd,de,ke->", basis, m, basis))
        return total
