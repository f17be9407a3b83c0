"""A refusal direction refined by gradient descent (the ``refined`` source of the abliteration search).

Difference-in-means gives a direction from activations alone; what an abliteration needs is a direction whose
removal stops the refusal opening while leaving harmless next-token distributions alone. Following refusal
direction optimisation (Wollschläger et al. 2025, "The Geometry of Refusal in Large Language Models"), the DiM
direction is only the starting point: with every residual writer ablated along ``r̂ = r/‖r‖`` (attention and MLP
outputs of every layer, ``y ↦ y − (y·r̂) r̂``, the full-weight abliteration), a few Adam steps on ``r ∈ R^d``
minimise

    L(r) = mean_harmful −log(1 − p_R) + λ · mean_harmless KL(p_base ‖ p_r)

over minibatches of the *train* prompts (never validation or held-out ones), with ``p_R`` the first-token
probability of the family's refusal openings and ``p_base`` the unedited model's first-token distribution.
``−log(1 − p_R)`` weighs the prompts that still refuse most; the KL term keeps harmless answers where they were.
The model's weights are frozen: only ``r`` is learned.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from pydantic import Field

from refusal_lab.core.config import ConfigModel
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.memory import release_freed_memory
from refusal_lab.interventions.hooks import apply_interventions
from refusal_lab.interventions.scoring import last_token_logprobs
from refusal_lab.models.forward import position_ids_for
from refusal_lab.search.edit import Abliteration


class RefineSettings(ConfigModel):
    """Gradient refinement of the ``refined`` source's direction (see the module docstring)."""

    steps: int = Field(4, ge=1)  # Adam steps on r
    lr: float = Field(0.01, gt=0)
    kl_weight: float = Field(1.0, ge=0)  # λ
    batch_size: int = Field(16, ge=1)  # harmful and harmless prompts per step
    micro_batch: int = Field(2, ge=1)  # prompts per side and forward; gradients accumulate (memory ∝ micro_batch)
    init_depth: float = Field(0.55, ge=0, le=1)  # the DiM start: the mixed source's, at this fraction of the depth


def first_token_logprobs(lm, prompts: Sequence[str]) -> torch.Tensor:
    """``log p(· | prompt)`` at the last prompt position, ``[n, vocab]`` float32, *with* autograd (one left-padded
    batch, no cache); only that position is unembedded."""
    batch = lm.tokenize(list(prompts))
    mask = batch["attention_mask"]
    body = lm.model.get_decoder()(input_ids=batch["input_ids"], attention_mask=mask,
                                  position_ids=position_ids_for(mask), use_cache=False)
    logits = lm.model.get_output_embeddings()(body.last_hidden_state[:, -1].contiguous())
    return torch.log_softmax(logits.float(), dim=-1)


def full_ablation(direction: torch.Tensor, n_layers: int) -> Abliteration:
    """Every attention and MLP writer ablated along ``direction / ‖direction‖`` with weight 1 (differentiable in
    ``direction``)."""
    unit = direction / direction.norm()
    ones = torch.ones(n_layers)
    return Abliteration(unit.expand(n_layers, -1), {"attn": ones, "mlp": ones})


def objective_terms(lm, direction: torch.Tensor, harmful: Sequence[str], harmless: Sequence[str],
                    base_logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per prompt, differentiable in ``direction [d]``: ``−log(1 − p_R)`` and ``p_R`` on each harmful prompt,
    ``KL(p_base ‖ p_r)`` on each harmless one (``base_logprobs [len(harmless), vocab]``); an empty side gives
    empty tensors."""
    empty = torch.zeros(0, device=lm.device)
    with apply_interventions(lm, full_ablation(direction, lm.n_layers).interventions()):
        p_refusal = bypass = kl = empty
        if harmful:
            log_p = first_token_logprobs(lm, harmful)
            p_refusal = torch.logsumexp(log_p[:, list(lm.refusal_token_ids)], -1).exp()
            bypass = -torch.log1p(-p_refusal.clamp(max=1 - 1e-6))
        if harmless:
            log_q = first_token_logprobs(lm, harmless)
            reference = base_logprobs.to(log_q.device)
            kl = (reference.exp() * (reference - log_q)).sum(-1)
    return bypass, p_refusal, kl


def accumulate_gradient(lm, r: torch.Tensor, harmful: list[str], harmless: list[str], base: torch.Tensor,
                         settings: RefineSettings) -> dict:
    """Add ``∇_r L`` (``L`` of the module docstring on these prompts, ``base [len(harmless), vocab]``) to ``r.grad``
    from forwards of ``settings.micro_batch`` prompts per side (each chunk's terms weighted by ``1/n`` of its side,
    so the chunks sum to the whole batch's objective); returns the objective's parts (bypass term, mean ``p_R``,
    mean KL)."""
    sums = {"bypass": 0.0, "p_refusal": 0.0, "kl": 0.0}
    size = settings.micro_batch
    for i in range(0, max(len(harmful), len(harmless)), size):
        bypass, p_refusal, kl = objective_terms(lm, r, harmful[i: i + size], harmless[i: i + size],
                                                base[i: i + size])
        loss = bypass.sum() / max(len(harmful), 1) + settings.kl_weight * kl.sum() / max(len(harmless), 1)
        loss.backward()
        sums["bypass"] += float(bypass.detach().sum())
        sums["p_refusal"] += float(p_refusal.detach().sum())
        sums["kl"] += float(kl.detach().sum())
    return {"bypass": sums["bypass"] / len(harmful), "p_refusal": sums["p_refusal"] / len(harmful),
            "kl": sums["kl"] / len(harmless)}


def refine_direction(lm, init: torch.Tensor, harmful: Sequence[str], harmless: Sequence[str],
                     settings: RefineSettings, seed: int = 0, log=None) -> tuple[torch.Tensor, list[dict]]:
    """The unit direction ``r̂ [d]`` (float32) after ``settings.steps`` Adam steps from ``init [d]`` on minibatches
    of ``settings.batch_size`` harmful and harmless prompts (forwards of ``settings.micro_batch`` per side, the
    gradients summed), and one record per step (the objective's parts on that
    minibatch before the step, cosine to ``init`` after it, seconds)."""
    if init.shape != (lm.hidden_size,):
        raise RefusalLabError(f"the initial direction has shape {tuple(init.shape)}; the model's hidden size is "
                              f"{lm.hidden_size}")
    if not torch.isfinite(init).all() or init.norm() == 0:
        raise RefusalLabError("the initial direction is zero or not finite; check the class means it came from")
    base = last_token_logprobs(lm, harmless, batch_size=2 * settings.batch_size)
    start = (init / init.norm()).float().to(lm.device)
    r = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.Adam([r], lr=settings.lr)
    generator = torch.Generator().manual_seed(seed)
    frozen = [p for p in lm.model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    history = []
    try:
        for step in range(1, settings.steps + 1):
            began = time.monotonic()
            rows_h = torch.randperm(len(harmful), generator=generator)[: settings.batch_size].tolist()
            rows_s = torch.randperm(len(harmless), generator=generator)[: settings.batch_size].tolist()
            optimizer.zero_grad()
            parts = accumulate_gradient(lm, r, [harmful[i] for i in rows_h], [harmless[i] for i in rows_s],
                                         base[rows_s], settings)
            if not torch.isfinite(r.grad).all():
                raise RefusalLabError(f"refinement step {step} gave a non-finite gradient; lower refine.lr")
            optimizer.step()
            release_freed_memory()  # the step's saved activations, before the next step's land on top
            record = {"step": step, **parts, "cos_init": float(r.detach() @ start / r.detach().norm()),
                      "seconds": time.monotonic() - began}
            history.append(record)
            if log is not None:
                log(f"refine step {step}/{settings.steps}: p_R {record['p_refusal']:.3f}, KL {record['kl']:.3f}, "
                    f"cos to DiM {record['cos_init']:.3f} ({record['seconds']:.1f} s)")
    finally:
        for p in frozen:
            p.requires_grad_(True)
    refined = r.detach()
    return (refined / refined.norm()).float().cpu(), history
