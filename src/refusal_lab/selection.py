"""Choose one refusal direction among the difference-in-means candidates r(l, i) (Arditi et al. 2024).

For candidate ``r = r(l, i)`` (layer l, post-instruction position i, unit ``r̂``), on validation prompts:
  * bypass  = mean refusal score on harmful prompts with ``r̂`` ablated at every layer and site (lower is better);
  * induce  = mean refusal score on harmless prompts with ``+r`` added at ``resid_pre`` of layer l;
  * KL      = mean KL(p_base ‖ p_ablated) of the next-token distribution on harmless prompts.
Filters: ``l < 0.8·L``, ``induce > 0``, ``KL < 0.1``; the chosen candidate has the lowest bypass among those left.

Exhaustive mode scores every candidate's bypass on all validation prompts, then checks the filters in bypass order
until one passes (the same pick as checking every candidate). The fast path reaches it with far fewer passes:
(0) estimate every candidate's bypass at once by attribution patching: ablating ``r̂`` from every write ``w`` to
    the residual stream (embedding, attention and MLP outputs) changes the summed refusal score by, to first order,
    ``Σ_w ∇_w·(−(w·r̂) r̂) = −r̂ᵀ M r̂`` with ``M = Σ_{w, prompt, position} ∇_w wᵀ`` — one forward and backward pass
    gives the ``d × d`` matrix M, and every candidate costs a quadratic form;
(1) screen the ``screen_keep`` best estimates for real on the few harmful validation prompts the model refuses
    most strongly, several candidates per forward pass (:func:`~refusal_lab.batched.batched_scores`);
(2) score the best ``finalists`` on all harmful validation prompts;
(3) walk them best-first and compute induce and KL only until one passes every filter (more are drawn if none
    does, up to ``max_checked`` candidates: past that the screen ranks them weak, and nothing is chosen). KL is
    first measured on ``kl_screen_prompts`` harmless prompts; a candidate already at ≥ 2× the bar there is
    rejected without the induce and full KL passes (on the 1.5B most finalists fail KL at 2–7×).
``benchmarks/bench_pipeline.py selection --exhaustive`` checks both modes pick the same candidate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from pydantic import NonNegativeInt, PositiveInt
from rich.progress import Progress

from refusal_lab.batched import batched_scores
from refusal_lab.config import ConfigModel
from refusal_lab.forward import position_ids_for
from refusal_lab.interventions.base import Addition, Projection
from refusal_lab.interventions.hooks import SITES, Intervention
from refusal_lab.scoring import kl_divergence, last_token_logprobs, refusal_scores


class SelectionConfig(ConfigModel):
    mode: Literal["fast", "exhaustive"] = "fast"
    max_layer_fraction: float = 0.8
    kl_threshold: float = 0.1
    induce_threshold: float = 0.0
    screen_keep: PositiveInt = 24
    screen_prompts: PositiveInt = 4
    finalists: PositiveInt = 6
    kl_screen_prompts: NonNegativeInt = 8  # fast mode: KL on this many harmless prompts first; 0 turns the screen off
    max_checked: PositiveInt = 24  # fast mode: nothing passes after checking induce / KL of this many finalists
    batch_size: PositiveInt = 32


@dataclass
class Candidate:
    """One candidate of a selection with its scores (NaN: not measured) and filter status.

    DiM (:func:`select_direction`): ``(layer, position)``. A method's artifact
    (:func:`refusal_lab.methods.select_method`): keyed ``(layer, position, k)``, ``k`` the leading rows of a stacked
    subspace (layer and position then None), with the first INLP classifier's held-out accuracy for INLP-derived
    methods. ``columns`` of :data:`DIM_COLUMNS` / :data:`METHOD_COLUMNS` are what each selection table holds.
    """

    layer: int | None
    position: int | None  # negative index from the end of the prompt (−1 = last post-instruction token)
    estimated_bypass: float = math.nan
    screen_bypass: float = math.nan
    bypass: float = math.nan
    induce: float = math.nan
    kl: float = math.nan
    status: str = "not evaluated"
    method: str = "dim"
    k: int | None = None
    inlp_accuracy: float = math.nan

    @property
    def key(self) -> tuple:
        return (self.layer, self.position, self.k)

    def record(self, columns: Sequence[str]) -> dict:
        return {column: getattr(self, column) for column in columns}

    def rank_key(self) -> tuple:
        """Selected first, then by the most precise bypass measured: full, screened, estimated."""
        for tier, value in enumerate((self.bypass, self.screen_bypass, self.estimated_bypass)):
            if not math.isnan(value):
                return (self.status != "selected", tier, value)
        return (self.status != "selected", 3, 0.0)


DIM_COLUMNS = ("layer", "position", "estimated_bypass", "screen_bypass", "bypass", "induce", "kl", "status")
METHOD_COLUMNS = ("method", "layer", "position", "k", "inlp_accuracy", "screen_bypass", "bypass", "induce", "kl",
                  "status")


@dataclass
class SelectionResult:
    candidates: list[Candidate]  # ranked: chosen first, then by bypass / screened bypass
    chosen: Candidate | None
    baseline_harmful: float
    baseline_harmless: float
    extra: dict = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([c.record(DIM_COLUMNS) for c in self.candidates], columns=list(DIM_COLUMNS))

    def ranked_layers(self) -> list[int]:
        """Distinct layers, best first (for the ``top50`` scope)."""
        scored = [c for c in self.candidates if not math.isnan(c.bypass) or not math.isnan(c.screen_bypass)
                  or not math.isnan(c.estimated_bypass)]
        return list(dict.fromkeys(c.layer for c in scored))

    def save(self, path: Path) -> None:
        self.table().to_csv(path, index=False)


def ablation(unit: torch.Tensor, n_layers: int) -> Intervention:
    """Directional ablation of ``unit`` at every site of every layer."""
    return Intervention(Projection(unit[None, :]), layers=tuple(range(n_layers)), sites=SITES, name="ablation")


def actadd(vector: torch.Tensor, layer: int, scale: float = 1.0) -> Intervention:
    """``h + scale·v`` at ``resid_pre`` of one layer."""
    return Intervention(Addition(vector, scale), layers=(layer,), sites=("resid_pre",), name="actadd")


def ablation_attribution(lm, prompts: Sequence[str], batch_size: int = 8) -> torch.Tensor:
    """``M = Σ ∇_w s · wᵀ`` ([d, d], float64) over every residual write ``w`` (the input of layer 0, each attention
    and MLP output), prompt and position, where ``s`` is the prompt's refusal score. Ablating unit ``r̂`` everywhere
    changes ``Σ_prompts s`` by ``−r̂ᵀ M r̂`` to first order."""
    writes: list[torch.Tensor] = []

    def embedding_write(module, args, kwargs):
        hidden = (args[0] if args else kwargs["hidden_states"]).detach().requires_grad_()
        writes.append(hidden)
        return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

    layers = lm.adapter.layers(lm.model)
    handles = [layers[0].register_forward_pre_hook(embedding_write, with_kwargs=True)]
    for layer in layers:
        for module in (lm.adapter.attn_writer(layer), lm.adapter.mlp_writer(layer)):
            handles.append(module.register_forward_hook(
                lambda m, a, out: writes.append(out[0] if isinstance(out, tuple) else out)))
    matrix = torch.zeros(lm.hidden_size, lm.hidden_size, dtype=torch.float64)
    try:
        for start in range(0, len(prompts), batch_size):
            writes.clear()
            batch = lm.tokenize(list(prompts[start : start + batch_size]))
            logits = lm.model(**batch, position_ids=position_ids_for(batch["attention_mask"]), use_cache=False,
                              logits_to_keep=1).logits[:, -1, :]
            total = refusal_scores(torch.log_softmax(logits.float(), -1), lm.refusal_token_ids).sum()
            grads = torch.autograd.grad(total, writes)
            for write, grad in zip(writes, grads):
                matrix += grad.reshape(-1, lm.hidden_size).double().T @ write.detach().reshape(-1, lm.hidden_size).double()
    finally:
        for handle in handles:
            handle.remove()
    return matrix


def select_direction(lm, candidates: torch.Tensor, val_harmful: Sequence[str], val_harmless: Sequence[str],
                     config: SelectionConfig | None = None) -> SelectionResult:
    """Score and filter the DiM candidates ``[L, P, d]``; see the module docstring."""
    config = config or SelectionConfig()
    n_layers, n_pos, _ = candidates.shape
    pool = [Candidate(l, p - n_pos) for l in range(n_layers) for p in range(n_pos)]
    vec = {(c.layer, c.position): candidates[c.layer, c.position + n_pos] for c in pool}
    for c in pool:
        if c.layer >= config.max_layer_fraction * n_layers:
            c.status = f"filtered: layer >= {config.max_layer_fraction}L"
        elif vec[(c.layer, c.position)].norm() < 1e-6:
            c.status = "filtered: zero direction"
    eligible = [c for c in pool if c.status == "not evaluated"]
    unit = lambda c: vec[(c.layer, c.position)] / vec[(c.layer, c.position)].norm()  # noqa: E731

    timings: dict[str, float] = {}

    @contextmanager
    def timed(stage: str):
        start = time.perf_counter()
        yield
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start

    with timed("baselines"):
        base_harmful = refusal_scores(last_token_logprobs(lm, val_harmful, batch_size=config.batch_size),
                                      lm.refusal_token_ids)
        base_harmless_lp = last_token_logprobs(lm, val_harmless, batch_size=config.batch_size)
    result = SelectionResult(pool, None, float(base_harmful.mean()),
                             float(refusal_scores(base_harmless_lp, lm.refusal_token_ids).mean()),
                             extra={"timings_s": timings})

    def score_bypass(cands: list[Candidate], prompts: Sequence[str], attribute: str, label: str) -> None:
        with Progress(transient=True) as progress, timed(label):
            task = progress.add_task(label, total=len(cands))
            chunk = max(1, config.batch_size // len(prompts))
            for start in range(0, len(cands), chunk):
                part = cands[start : start + chunk]
                ablations = [[ablation(unit(c), lm.n_layers)] for c in part]
                means = batched_scores(lm, prompts, ablations, rows_per_pass=config.batch_size)[0].mean(-1)
                for c, value in zip(part, means.tolist()):
                    setattr(c, attribute, value)
                progress.advance(task, len(part))

    def check_filters(c: Candidate, kl_screen: int = 0) -> bool:
        """Induce then KL on the harmless val prompts. With ``kl_screen`` the ablated log-probs of the first
        ``kl_screen`` prompts come first (most finalists fail KL far above the bar) and are reused in the full KL."""
        with timed("filters (induce, KL)"):
            ablate = [ablation(unit(c), lm.n_layers)]
            ablated = []
            if kl_screen:
                ablated.append(last_token_logprobs(lm, val_harmless[:kl_screen], ablate, config.batch_size))
                screened = float(kl_divergence(base_harmless_lp[:kl_screen], ablated[0]).mean())
                if screened >= 2 * config.kl_threshold:
                    c.status = (f"filtered: KL >= {config.kl_threshold} "
                                f"(screened on {kl_screen} prompts: {screened:.2f})")
                    return False
            induced = last_token_logprobs(lm, val_harmless, [actadd(vec[(c.layer, c.position)], c.layer)],
                                          config.batch_size)
            c.induce = float(refusal_scores(induced, lm.refusal_token_ids).mean())
            if c.induce <= config.induce_threshold:
                c.status = f"filtered: induce <= {config.induce_threshold}"
                return False
            if kl_screen < len(val_harmless):
                ablated.append(last_token_logprobs(lm, val_harmless[kl_screen:], ablate, config.batch_size))
            c.kl = float(kl_divergence(base_harmless_lp, torch.cat(ablated)).mean())
            if c.kl >= config.kl_threshold:
                c.status = f"filtered: KL >= {config.kl_threshold}"
                return False
            c.status = "passed"
            return True

    if config.mode == "exhaustive":
        score_bypass(eligible, val_harmful, "bypass", "bypass (all candidates)")
        first = next((c for c in sorted(eligible, key=lambda c: c.bypass) if check_filters(c)), None)
        passing = [first] if first else []
    elif config.mode == "fast":
        with torch.enable_grad(), timed("attribution estimate"):
            attribution = ablation_attribution(lm, val_harmful)
        for c in eligible:
            r = unit(c).double()
            c.estimated_bypass = float(base_harmful.mean() - r @ attribution @ r / len(val_harmful))
        shortlist = sorted(eligible, key=lambda c: c.estimated_bypass)[: config.screen_keep]
        strongest = base_harmful.argsort(descending=True)[: config.screen_prompts].tolist()
        score_bypass(shortlist, [val_harmful[i] for i in strongest], "screen_bypass", "screening candidates")
        ranked_screen = sorted(shortlist, key=lambda c: c.screen_bypass) + sorted(
            (c for c in eligible if c not in shortlist), key=lambda c: c.estimated_bypass)
        passing = []
        for start in range(0, min(len(ranked_screen), config.max_checked), config.finalists):
            finalists = ranked_screen[start : min(start + config.finalists, config.max_checked)]
            score_bypass(finalists, val_harmful, "bypass", "scoring finalists")
            for c in sorted(finalists, key=lambda c: c.bypass):
                if check_filters(c, kl_screen=min(config.kl_screen_prompts, len(val_harmless))):
                    passing = [c]
                    break
            if passing:
                break
    else:
        raise ValueError(f"unknown selection mode {config.mode!r}; use 'fast' or 'exhaustive'")

    if passing:
        result.chosen = passing[0]
        result.chosen.status = "selected"
    result.candidates = sorted(pool, key=Candidate.rank_key)
    return result
