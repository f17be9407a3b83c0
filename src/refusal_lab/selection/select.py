"""The one selector: score a method's candidates on the validation split and choose one per scope.

Every method (:mod:`refusal_lab.methods.registry`) turns a candidate artifact at a scope into a :class:`Plan`:
the intervention that should *bypass* refusal (scored on harmful val prompts, lower is better), the one that should
*induce* it (harmless val prompts; ``None`` for a pure erasure) and the one whose damage is measured (KL on harmless
val prompts). The criteria are Arditi et al.'s for every method: layer < ``max_layer_fraction``·L, induce >
``induce_threshold``, KL < ``kl_threshold`` (plus first-classifier accuracy ≥ ``min_inlp_accuracy`` for the
INLP-derived methods); the chosen candidate has the lowest bypass among those left.

Additive induce plans (ActAdd of a DiM or classifier vector) are tried at each of ``induce_scales`` in turn and pass
at the first scale whose induce score clears the bar; the scale is recorded (``induce_scale``), so a model whose
matched-pair directions are short (the 0.5B) still yields a direction and the table says what was relaxed.

Exhaustive mode scores every candidate's bypass on all val prompts, then checks the filters in bypass order. Fast
mode (default) reaches the same pick with fewer passes:
(0) a first-order *prior* for linear projections (:class:`~refusal_lab.selection.attribution.AttributionPrior`: one forward
    and backward pass gives every candidate's estimated bypass as a quadratic form); other maps have no prior;
(1) screen the ``screen_keep`` best by prior (every candidate without one) on the ``screen_prompts`` most strongly
    refused val prompts, several candidates per forward pass (:func:`~refusal_lab.interventions.batched.batched_scores`);
(2) score the best ``finalists`` on every harmful val prompt; (3) walk them best-first and compute induce and KL
    until one passes (at most ``max_checked``). KL is first measured on ``kl_screen_prompts`` prompts: a candidate
    already at ≥ 2× the bar there is rejected without the full pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import torch
from pydantic import NonNegativeInt, PositiveInt, field_validator
from rich.progress import Progress

from refusal_lab.core.config import ConfigModel
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.vocabulary import SCOPES, Scope
from refusal_lab.interventions.batched import batched_scores
from refusal_lab.interventions.hooks import Intervention
from refusal_lab.interventions.scoring import kl_divergence, last_token_logprobs, refusal_scores


class SelectionConfig(ConfigModel):
    """Selection settings shared by every method (``[selection]`` in a run config)."""

    mode: Literal["fast", "exhaustive"] = "fast"
    # "dim": every other method is selected only among its candidates at the (layer, position) DiM chose at the same
    # scope (a matched location, minutes faster); "all": each method searches every layer and position
    candidates: Literal["all", "dim"] = "all"
    scopes: list[Scope] = ["all"]
    max_layer_fraction: float = 0.8
    kl_threshold: float = 0.1
    induce_threshold: float = 0.0
    induce_scales: list[float] = [1.0, 2.0, 4.0]
    min_inlp_accuracy: float = 0.9
    prior_prompts: PositiveInt = 32  # fast mode: the attribution prior on this many most-refused val prompts
    screen_keep: PositiveInt = 24
    screen_prompts: PositiveInt = 4
    finalists: PositiveInt = 6
    kl_screen_prompts: NonNegativeInt = 8  # KL on this many harmless prompts first; 0 turns the screen off
    max_checked: PositiveInt = 24  # give up (nothing passes) after checking induce / KL of this many candidates
    batch_size: PositiveInt = 32

    @field_validator("induce_scales")
    @classmethod
    def _positive_scales(cls, scales: list[float]) -> list[float]:
        if not scales or any(not s > 0 for s in scales):
            raise ValueError("induce_scales must be a non-empty list of positive numbers")
        return scales

    @field_validator("scopes")
    @classmethod
    def _scopes_in_order(cls, scopes: list[str]) -> list[str]:
        """``top50`` needs the DiM layer ranking of an earlier scope: it runs last."""
        scopes = list(dict.fromkeys(scopes))
        if scopes == ["top50"]:
            raise ValueError("scope top50 needs a layer ranking: select at 'layer' or 'all' too")
        return sorted(scopes, key=lambda s: s == "top50")


@dataclass
class Plan:
    """What selection applies for one candidate: bypass (harmful), induce (harmless; per scale for additive
    plans), KL (harmless). ``kl_key`` lets methods whose KL intervention coincides share one measurement."""

    bypass: list[Intervention]
    kl: list[Intervention]
    induce: dict[float, list[Intervention]] | None = None
    kl_key: tuple | None = None


@dataclass
class Candidate:
    """One candidate with its scores (NaN: not measured) and filter status. Keyed ``(layer, position, k)``;
    ``k`` numbers the leading rows of a stacked subspace (layer and position then None)."""

    method: str
    scope: str
    layer: int | None
    position: int | None  # negative index from the end of the prompt (−1 = last post-instruction token)
    k: int | None = None
    inlp_accuracy: float = math.nan
    estimated_bypass: float = math.nan
    screen_bypass: float = math.nan
    bypass: float = math.nan
    induce: float = math.nan
    induce_scale: float = math.nan
    kl: float = math.nan
    status: str = "not evaluated"

    @property
    def key(self) -> tuple:
        return (self.layer, self.position, self.k)

    def rank_key(self) -> tuple:
        """Selected first, then by the most precise bypass measured: full, screened, estimated."""
        for tier, value in enumerate((self.bypass, self.screen_bypass, self.estimated_bypass)):
            if not math.isnan(value):
                return (not self.status.startswith("selected"), tier, value)
        return (not self.status.startswith("selected"), 3, 0.0)


COLUMNS = ("method", "scope", "layer", "position", "k", "inlp_accuracy", "estimated_bypass", "screen_bypass",
           "bypass", "induce", "induce_scale", "kl", "status")


def table(candidates: Sequence[Candidate]) -> pd.DataFrame:
    """The selection table (one schema for every method)."""
    return pd.DataFrame([{c: getattr(cand, c) for c in COLUMNS} for cand in candidates], columns=list(COLUMNS))


def candidates_from_table(frame: pd.DataFrame) -> list[Candidate]:
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    out = []
    for row in rows:
        for key in ("layer", "position", "k"):
            row[key] = None if row[key] is None else int(row[key])
        for key in ("inlp_accuracy", "estimated_bypass", "screen_bypass", "bypass", "induce", "induce_scale", "kl"):
            row[key] = math.nan if row[key] is None else float(row[key])
        out.append(Candidate(**row))
    return out


@dataclass
class Selection:
    """One method's ranked candidates at one scope, and its choice (None: nothing passed)."""

    method: str
    scope: str
    candidates: list[Candidate]
    chosen: Candidate | None
    timings_s: dict[str, float] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        return table(self.candidates)

    def closest(self) -> Candidate | None:
        """The best-bypass candidate that was fully scored (what to show when nothing passed)."""
        scored = [c for c in self.candidates if not math.isnan(c.bypass)]
        return min(scored, key=lambda c: c.bypass) if scored else None


@dataclass
class Baseline:
    """Unintervened val scores shared by every method's selection."""

    harmful_scores: torch.Tensor  # [n_harmful]
    harmless_logprobs: torch.Tensor  # [n_harmless, vocab]
    harmless_scores: torch.Tensor  # [n_harmless]

    @classmethod
    def compute(cls, lm, val_harmful: Sequence[str], val_harmless: Sequence[str], batch_size: int = 32) -> Baseline:
        harmful = refusal_scores(last_token_logprobs(lm, val_harmful, batch_size=batch_size), lm.refusal_token_ids)
        harmless_lp = last_token_logprobs(lm, val_harmless, batch_size=batch_size)
        return cls(harmful, harmless_lp, refusal_scores(harmless_lp, lm.refusal_token_ids))


def select(lm, method: str, plans: dict[tuple, Plan], pool: list[Candidate], val_harmful: Sequence[str],
           val_harmless: Sequence[str], config: SelectionConfig, baseline: Baseline,
           prior=None, kl_cache: dict | None = None) -> Selection:
    """Rank ``pool`` (candidates of one method at one scope, already filtered where their status says so) and
    choose one; ``plans[c.key]`` says what each eligible candidate applies. ``prior``: an
    :class:`~refusal_lab.selection.attribution.AttributionPrior` on the harmful val prompts (fast mode)."""
    kl_cache = {} if kl_cache is None else kl_cache
    eligible = [c for c in pool if c.status == "not evaluated"]
    timings: dict[str, float] = {}

    @contextmanager
    def timed(stage: str):
        start = time.perf_counter()
        yield
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start

    def score_bypass(cands: list[Candidate], prompts: Sequence[str], attribute: str, label: str) -> None:
        if not cands:
            return
        with Progress(transient=True) as progress, timed(label):
            task = progress.add_task(f"{method}[{pool[0].scope}] {label}", total=len(cands))
            chunk = max(1, config.batch_size // len(prompts))
            for start in range(0, len(cands), chunk):
                part = cands[start : start + chunk]
                means = batched_scores(lm, prompts, [plans[c.key].bypass for c in part],
                                       rows_per_pass=config.batch_size)[0].mean(-1)
                for c, value in zip(part, means.tolist()):
                    setattr(c, attribute, value)
                progress.advance(task, len(part))

    def kl_of(c: Candidate, prompts_from: int, prompts_to: int) -> torch.Tensor:
        return kl_divergence(baseline.harmless_logprobs[prompts_from:prompts_to], last_token_logprobs(
            lm, val_harmless[prompts_from:prompts_to], plans[c.key].kl, config.batch_size))

    def check_filters(c: Candidate, kl_screen: int = 0) -> bool:
        plan = plans[c.key]
        with timed("filters (induce, KL)"):
            cached = kl_cache.get(plan.kl_key) if plan.kl_key is not None else None
            screened = None
            if cached is None and kl_screen:
                screened = kl_of(c, 0, kl_screen)
                if float(screened.mean()) >= 2 * config.kl_threshold:
                    c.status = (f"filtered: KL >= {config.kl_threshold} "
                                f"(screened on {kl_screen} prompts: {float(screened.mean()):.2f})")
                    return False
            if plan.induce is not None:
                for scale, ivs in plan.induce.items():
                    induced = last_token_logprobs(lm, val_harmless, ivs, config.batch_size)
                    c.induce, c.induce_scale = float(refusal_scores(induced, lm.refusal_token_ids).mean()), scale
                    if c.induce > config.induce_threshold:
                        break
                if not c.induce > config.induce_threshold:
                    c.status = f"filtered: induce <= {config.induce_threshold}"
                    return False
            if cached is None:
                start = kl_screen if screened is not None else 0
                parts = [screened] if screened is not None else []
                if start < len(val_harmless):
                    parts.append(kl_of(c, start, len(val_harmless)))
                cached = float(torch.cat(parts).mean())
                if plan.kl_key is not None:
                    kl_cache[plan.kl_key] = cached
            c.kl = cached
            if not c.kl < config.kl_threshold:
                c.status = f"filtered: KL >= {config.kl_threshold}"
                return False
            relaxed = "" if math.isnan(c.induce_scale) or c.induce_scale == config.induce_scales[0] else \
                f" (induce at scale {c.induce_scale:g})"
            c.status = "passed" + relaxed
            return True

    chosen = None
    if config.mode == "exhaustive":
        score_bypass(eligible, val_harmful, "bypass", "bypass (all candidates)")
        chosen = next((c for c in sorted(eligible, key=lambda c: c.bypass) if check_filters(c)), None)
    else:
        with_prior = []
        if prior is not None:
            with timed("attribution estimate"):
                for c in eligible:
                    estimate = prior.estimate(plans[c.key].bypass)
                    if estimate is not None:
                        c.estimated_bypass = float(baseline.harmful_scores.mean()) + estimate / prior.n_prompts
                        with_prior.append(c)
        by_prior = sorted(with_prior, key=lambda c: c.estimated_bypass)
        shortlist = by_prior[: config.screen_keep] + [c for c in eligible if c not in with_prior]
        strongest = baseline.harmful_scores.argsort(descending=True)[: config.screen_prompts].tolist()
        score_bypass(shortlist, [val_harmful[i] for i in strongest], "screen_bypass", "screening")
        ranked = sorted(shortlist, key=lambda c: c.screen_bypass) + by_prior[config.screen_keep:]
        kl_screen = min(config.kl_screen_prompts, len(val_harmless))
        for start in range(0, min(len(ranked), config.max_checked), config.finalists):
            finalists = ranked[start : min(start + config.finalists, config.max_checked)]
            score_bypass(finalists, val_harmful, "bypass", "finalists")
            chosen = next((c for c in sorted(finalists, key=lambda c: c.bypass) if check_filters(c, kl_screen)),
                          None)
            if chosen:
                break
    if chosen is not None:
        chosen.status = chosen.status.replace("passed", "selected", 1)
    return Selection(method, pool[0].scope if pool else "", sorted(pool, key=Candidate.rank_key), chosen, timings)


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise RefusalLabError(f"unknown scope {scope!r}; scopes are {', '.join(SCOPES)}")
    return scope
