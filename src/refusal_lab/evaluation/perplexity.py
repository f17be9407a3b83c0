"""Token-level cross-entropy of raw text (sliding window) and of responses given chat-formatted instructions.

Raw text is tokenized plainly, with the tokenizer's default special tokens (a BOS only where the tokenizer adds
one). Sliding window (Hugging Face's "perplexity of fixed-length models"): for a document of ``T`` tokens, windows
``[b, min(b + window, T))`` for ``b = 0, stride, 2·stride, …`` until one reaches ``T``; each window scores only the
tokens after the previous window's end (never its own first token, which has no context), so with
``stride < window`` every token ``t ≥ 1`` is scored exactly once, given at least ``window − stride`` preceding
tokens (``stride = window``: disjoint chunks, each chunk's first token unscored). Windows start at position 0.

Windows of all documents are sorted by length and batched with left padding; the decoder body runs once per batch
(with any shared token prefix cached, :func:`refusal_lab.models.forward.token_batches`) and only scored positions are
unembedded. Results are per document, so callers can bootstrap over documents:
``perplexity = exp(Σ_d nll_d / Σ_d n_d)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.interventions.hooks import Intervention, apply_interventions
from refusal_lab.interventions.scoring import kl_divergence
from refusal_lab.models.forward import token_batches


@dataclass
class TokenLosses:
    """Per-document summed negative log-likelihood (nats) ``nll[d]`` over ``n_tokens[d]`` scored tokens."""

    ids: list[str]
    nll: torch.Tensor  # [n_docs] float64
    n_tokens: torch.Tensor  # [n_docs] int64

    @property
    def mean_nll(self) -> float:
        """Token-averaged cross-entropy ``Σ nll / Σ n_tokens`` (nats per token)."""
        return float(self.nll.sum() / self.n_tokens.sum())

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)


def unembed(lm, hidden: torch.Tensor) -> torch.Tensor:
    """Logits ``[..., vocab]`` from final hidden states ``[..., d]`` as the causal-LM head computes them (with
    Gemma 2/3's final logit soft-capping)."""
    logits = lm.model.lm_head(hidden)
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def _scored_states(lm, batch, n_targets: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Run the decoder body on one batch; return the final hidden states that predict each row's last
    ``n_targets`` tokens ``[Σk, d]``, those tokens ``[Σk]`` and the per-row counts (rows in ``batch.rows`` order)."""
    hidden = lm.model.model(**batch.inputs, use_cache=batch.inputs.get("past_key_values") is not None)
    hidden = hidden.last_hidden_state  # [B, L, d], left padded: every row ends at position L - 1
    width = hidden.shape[1]
    picks = [(b, width - 1 - n_targets[i], n_targets[i]) for b, i in enumerate(batch.rows)]
    states = torch.cat([hidden[b, start : start + k] for b, start, k in picks])  # predicting positions
    targets = torch.cat([batch.inputs["input_ids"][b, start + 1 : start + 1 + k] for b, start, k in picks])
    return states, targets, [k for *_, k in picks]


def _check_targets(rows: Sequence[Sequence[int]], n_targets: Sequence[int]) -> None:
    if any(not 0 < k < len(r) for r, k in zip(rows, n_targets)):
        raise RefusalLabError("every row needs 1 ≤ n_targets < its length (the first token has no context)")


@torch.no_grad()
def target_logprobs(lm, rows: Sequence[Sequence[int]], n_targets: Sequence[int], batch_size: int = 8,
                    chunk: int = 1024) -> list[torch.Tensor]:
    """``log p(x_t | x_<t)`` for the last ``n_targets[i]`` tokens of each ``rows[i]``: a list of ``[n_targets[i]]``
    float32 tensors in row order. Hooks already applied act on the forward; ``chunk`` bounds the unembedded rows."""
    _check_targets(rows, n_targets)
    out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
    for batch in token_batches(lm, rows, batch_size, keep=[k + 1 for k in n_targets], body_only=True):
        states, targets, counts = _scored_states(lm, batch, n_targets)
        scores = torch.cat([
            torch.log_softmax(unembed(lm, states[s : s + chunk]).float(), -1)
            .gather(-1, targets[s : s + chunk, None].to(states.device))[:, 0]
            for s in range(0, len(states), chunk)]).cpu()
        for i, part in zip(batch.rows, scores.split(counts)):
            out[i] = part
    return out


@torch.no_grad()
def response_kl(lm, instructions: Sequence[str], responses: Sequence[str],
                interventions: Sequence[Intervention] = (), batch_size: int = 8, chunk: int = 128) -> torch.Tensor:
    """Full-response KL: per response, the mean over its tokens ``t`` of ``KL(p_base(·|x_<t) ‖ p_method(·|x_<t))``
    (nats), teacher-forced on the given ``responses`` after the chat-formatted ``instructions`` ``[n]`` float64
    (NaN for an empty response). Each batch runs twice, without and with ``interventions``."""
    rows, n_targets, keep = _response_rows(lm, instructions, responses)
    _check_targets(rows, n_targets)
    out = torch.full((len(responses),), float("nan"), dtype=torch.float64)
    keeps = [k + 1 for k in n_targets]
    # two batch streams in the same order; each computes its shared prefix on first use, under its own hooks
    base_batches = token_batches(lm, rows, batch_size, keep=keeps, body_only=True)
    method_batches = token_batches(lm, rows, batch_size, keep=keeps, body_only=True)
    for base_batch in base_batches:
        base_states, _, counts = _scored_states(lm, base_batch, n_targets)
        with apply_interventions(lm, interventions):
            method_states, _, _ = _scored_states(lm, next(method_batches), n_targets)
        kl = torch.cat([
            kl_divergence(torch.log_softmax(unembed(lm, base_states[s : s + chunk]).float(), -1),
                          torch.log_softmax(unembed(lm, method_states[s : s + chunk]).float(), -1))
            for s in range(0, len(base_states), chunk)]).cpu()
        for r, part in zip(base_batch.rows, kl.split(counts)):
            out[keep[r]] = part.double().mean()
    return out


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Sliding windows ``(begin, end, n_scored)`` over ``n_tokens`` tokens; Σ n_scored = n_tokens − 1 when
    ``stride < window``."""
    if not 0 < stride <= window or window < 2:
        raise RefusalLabError(f"need 0 < stride ≤ window and window ≥ 2, got window={window}, stride={stride}")
    spans, previous_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        spans.append((begin, end, min(end - previous_end, end - begin - 1)))
        previous_end = end
        if end == n_tokens:
            break
    return [s for s in spans if s[2] > 0]


def _losses(lm, ids: Sequence[str], rows: list[list[int]], n_targets: list[int], owners: list[int],
            interventions: Sequence[Intervention], batch_size: int) -> TokenLosses:
    nll = torch.zeros(len(ids), dtype=torch.float64)
    count = torch.zeros(len(ids), dtype=torch.long)
    with apply_interventions(lm, interventions):
        scores = target_logprobs(lm, rows, n_targets, batch_size) if rows else []
    for owner, part in zip(owners, scores):
        nll[owner] -= part.double().sum()
        count[owner] += len(part)
    return TokenLosses(list(ids), nll, count)


def text_losses(lm, texts: Sequence[str], ids: Sequence[str] | None = None,
                interventions: Sequence[Intervention] = (), window: int = 1024, stride: int = 512,
                batch_size: int = 8) -> TokenLosses:
    """Sliding-window NLL of raw (not chat-formatted) ``texts`` under ``interventions``; a document of one token
    scores nothing (``n_tokens = 0``)."""
    encoded = lm.tokenizer(list(texts))["input_ids"]
    rows, n_targets, owners = [], [], []
    for d, tokens in enumerate(encoded):
        for begin, end, k in windows(len(tokens), window, stride):
            rows.append(tokens[begin:end])
            n_targets.append(k)
            owners.append(d)
    ids = list(ids) if ids is not None else [str(i) for i in range(len(texts))]
    return _losses(lm, ids, rows, n_targets, owners, interventions, batch_size)


def response_losses(lm, instructions: Sequence[str], responses: Sequence[str],
                    interventions: Sequence[Intervention] = (), batch_size: int = 8) -> TokenLosses:
    """NLL of each response's tokens given its chat-formatted instruction: row = ``format(instruction)`` tokens +
    ``response`` tokens (each tokenized without special tokens), scored on the response tokens only. Empty
    responses score nothing."""
    rows, n_targets, keep = _response_rows(lm, instructions, responses)
    return _losses(lm, [str(i) for i in range(len(responses))], rows, n_targets, keep, interventions, batch_size)


def _response_rows(lm, instructions: Sequence[str], responses: Sequence[str]
                   ) -> tuple[list[list[int]], list[int], list[int]]:
    """Rows ``format(instruction)`` tokens + ``response`` tokens (each without special tokens), the number of
    response tokens per row, and which responses they are (empty responses get no row)."""
    if len(instructions) != len(responses):
        raise RefusalLabError(f"{len(instructions)} instructions but {len(responses)} responses")
    prompts = lm.tokenizer(lm.format(list(instructions)), add_special_tokens=False)["input_ids"]
    answers = lm.tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    keep = [i for i, a in enumerate(answers) if a]
    return [prompts[i] + answers[i] for i in keep], [len(answers[i]) for i in keep], keep


def response_perplexity(lm, instructions: Sequence[str], responses: Sequence[str],
                        interventions: Sequence[Intervention] = (), batch_size: int = 8) -> float:
    """``exp(Σ nll / Σ tokens)`` over all response tokens (:func:`response_losses`)."""
    return response_losses(lm, instructions, responses, interventions, batch_size).perplexity
