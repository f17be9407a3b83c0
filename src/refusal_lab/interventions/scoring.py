"""Next-token scores at the first generated position (the last prompt position), under interventions.

Refusal metric (Arditi et al. 2024): with ``p_R = Σ_{t ∈ R} p(t)`` over the family's refusal tokens ``R``,
``refusal_score = log p_R − log(1 − p_R)`` (log-odds; > 0 means refusal is the likelier opening).
KL is ``KL(p_base ‖ p_intervened)`` of the next-token distribution, averaged over prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from refusal_lab.interventions.hooks import Intervention, apply_interventions
from refusal_lab.models.forward import prefix_batches


@torch.no_grad()
def last_token_logprobs(lm, prompts: Sequence[str], interventions: Sequence[Intervention] = (),
                        batch_size: int = 32) -> torch.Tensor:
    """``log p(· | prompt)`` at the last prompt position, ``[n, vocab]`` float32 (rows in prompt order).

    Only that position is unembedded and the shared template prefix runs once (:mod:`refusal_lab.models.forward`)."""
    result = None
    with apply_interventions(lm, interventions):
        for batch in prefix_batches(lm, prompts, batch_size):
            logits = lm.model(**batch.inputs, use_cache=True, logits_to_keep=1).logits[:, -1, :]
            if result is None:
                result = torch.empty(len(prompts), logits.shape[-1])
            result[batch.rows] = torch.log_softmax(logits.float(), dim=-1).cpu()
    return result


def refusal_scores(logprobs: torch.Tensor, refusal_token_ids: Sequence[int]) -> torch.Tensor:
    """Per-prompt ``log p_R − log(1 − p_R)`` from ``[n, vocab]`` log-probabilities."""
    log_p = torch.logsumexp(logprobs[:, list(refusal_token_ids)].double(), dim=-1)
    return (log_p - torch.log1p(-log_p.exp().clamp(max=1 - 1e-12))).float()


def kl_divergence(base_logprobs: torch.Tensor, new_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-prompt ``KL(p_base ‖ p_new)`` in nats from two ``[n, vocab]`` log-probability tensors."""
    base = base_logprobs.double()
    return (base.exp() * (base - new_logprobs.double())).sum(-1).float()
