"""Score many candidate interventions with few forward passes: each candidate owns a block of batch rows.

A pass over ``n`` prompts and ``C`` candidates runs ``C·n`` rows laid out candidate-major (rows ``c·n … c·n+n−1``
belong to candidate ``c``). At every hook point a :class:`PerCandidate` applies candidate ``c``'s transform to its
block only. The prompts' shared chat-template prefix runs once per candidate (``prefix_batches(repeat=C)``) and
only the last position is unembedded (``logits_to_keep=1``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from refusal_lab.interventions.base import Projection
from refusal_lab.interventions.hooks import Intervention, apply_interventions
from refusal_lab.interventions.scoring import kl_divergence, refusal_scores
from refusal_lab.models.forward import prefix_batches


class PerCandidate:
    """At one hook point, ``h [C·m, …, d] ↦`` each block ``h[c·m : (c+1)·m]`` through candidate ``c``'s transforms
    (blocks of candidates without one pass through unchanged).

    When every candidate has exactly one :class:`~refusal_lab.interventions.base.Projection` here with the same
    rank ``k`` (e.g. DiM directional ablation, an abliteration's weighted writes), the blocks are projected at once
    with the stacked bases ``V [C, k, d]`` and weights ``α [C]``: ``h_c ↦ h_c − α_c (h_c V_cᵀ) V_c``.
    """

    stacking = "each"
    idempotent = True

    def __init__(self, n_candidates: int, entries: Sequence[tuple[int, Callable]]) -> None:
        self.n_candidates = n_candidates
        self.entries = list(entries)  # (candidate, transform) in application order
        transforms = [t for _, t in self.entries]
        self.stacked = ([c for c, _ in self.entries] == list(range(n_candidates))
                        and all(type(t) is Projection for t in transforms)
                        and len({t.basis.shape for t in transforms}) == 1)
        if self.stacked:
            self.basis = torch.stack([t.basis for t in transforms]).float()  # [C, k, d]
            self.alpha = torch.tensor([float(t.alpha) for t in transforms])[:, None, None]  # [C, 1, 1]
            self._placed: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # per device (a device map)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        if self.stacked:
            if h.device not in self._placed:
                self._placed[h.device] = (self.basis.to(h.device), self.alpha.to(h.device))
            basis, alpha = self._placed[h.device]
            blocks = h.float().reshape(self.n_candidates, -1, h.shape[-1])  # [C, m·…, d]
            projected = blocks - alpha * (blocks @ basis.mT) @ basis
            return projected.reshape(h.shape).to(h.dtype)
        per = h.shape[0] // self.n_candidates
        out = h.clone()
        for c, transform in self.entries:
            rows = slice(c * per, (c + 1) * per)
            out[rows] = transform(out[rows])
        return out


@torch.no_grad()
def batched_scores(lm, prompts: Sequence[str], candidates: Sequence[Sequence[Intervention]],
                   base_logprobs: torch.Tensor | None = None,
                   rows_per_pass: int = 32) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Refusal scores ``[C, n]`` (and, given ``base_logprobs [n, vocab]``, ``KL(p_base ‖ p_c)`` ``[C, n]``) of the
    ``n`` prompts under each of ``C`` candidate intervention lists — any kinds, layers and sites.

    About ``rows_per_pass`` rows per forward: ``min(n, rows_per_pass)`` prompts times ``rows_per_pass // that``
    candidates. Equal to scoring the candidates one at a time with
    :func:`~refusal_lab.interventions.scoring.last_token_logprobs` up to float rounding (tested)."""
    n = len(prompts)
    per_batch = min(n, rows_per_pass)
    per_pass = max(1, rows_per_pass // per_batch)
    scores = torch.empty(len(candidates), n)
    kl = torch.empty(len(candidates), n) if base_logprobs is not None else None
    for start in range(0, len(candidates), per_pass):
        chunk = candidates[start : start + per_pass]
        points: dict[tuple[int, str], list[tuple[int, Callable]]] = {}
        for c, interventions in enumerate(chunk):
            for intervention in interventions:
                for point in intervention.hook_points():
                    points.setdefault(point, []).append((c, intervention.transform))
        hooks = [Intervention(PerCandidate(len(chunk), entries), layers=(layer,), sites=(site,))
                 for (layer, site), entries in points.items()]
        with apply_interventions(lm, hooks):
            for batch in prefix_batches(lm, prompts, per_batch, repeat=len(chunk)):
                logits = lm.model(**batch.inputs, use_cache=True, logits_to_keep=1).logits[:, -1, :]
                logprobs = torch.log_softmax(logits.float(), -1).cpu().view(len(chunk), len(batch.rows), -1)
                for c in range(len(chunk)):
                    scores[start + c, batch.rows] = refusal_scores(logprobs[c], lm.refusal_token_ids)
                    if kl is not None:
                        kl[start + c, batch.rows] = kl_divergence(base_logprobs[batch.rows], logprobs[c])
    return scores, kl
