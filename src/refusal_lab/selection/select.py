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
(0) a first-order *prior* for linear projections (:class:`~refusal_lab.selection.attribution.AttributionPrior`:
    one forward and backward pass gives every candidate's estimated bypass as a quadratic form); other maps have
    no prior;
(1) screen the ``screen_keep`` best by prior (every candidate without one) on the ``screen_prompts`` most strongly
    refused val prompts, several candidates per forward pass
    (:func:`~refusal_lab.interventions.batched.batched_scores`);
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
from refusal_lab.core.vocabulary import Scope, check_scope  # noqa: F401 (check_scope moved there; still here)
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
        """What to show when nothing passed: the best-bypass candidate among those whose KL was measured on every
        harmless val prompt (they reached the last filter), else among those whose bypass was scored on every
        harmful val prompt (a candidate rejected by the KL screen on a few prompts is only the latter)."""
        for reached in (lambda c: not math.isnan(c.kl), lambda c: True):
            scored = [c for c in self.candidates if not math.isnan(c.bypass) and reached(c)]
            if scored:
                return min(scored, key=lambda c: c.bypass)
        return None


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
    scope = pool[0].scope if pool else ""
    run = _Scoring(lm, f"{method}[{scope}]", plans, val_harmful, val_harmless, config, baseline,
                   {} if kl_cache is None else kl_cache)
    eligible = [c for c in pool if c.status == "not evaluated"]
    chosen = run.exhaustive(eligible) if config.mode == "exhaustive" else run.fast(eligible, prior)
    if chosen is not None:
        chosen.status = chosen.status.replace("passed", "selected", 1)
    return Selection(method, scope, sorted(pool, key=Candidate.rank_key), chosen, run.timings)


@dataclass
class _Scoring:
    """One :func:`select` call's model, plans, prompts and settings; its stages write each candidate's scores and
    status, and add their wall time to ``timings`` (stage → seconds)."""

    lm: object
    label: str  # "method[scope]", the progress bars' prefix
    plans: dict[tuple, Plan]
    val_harmful: Sequence[str]
    val_harmless: Sequence[str]
    config: SelectionConfig
    baseline: Baseline
    kl_cache: dict  # plan.kl_key → mean KL, shared between methods whose KL intervention coincides
    timings: dict[str, float] = field(default_factory=dict)

    def exhaustive(self, eligible: list[Candidate]) -> Candidate | None:
        """Every candidate's bypass on all harmful val prompts, then the filters in bypass order."""
        self.score_bypass(eligible, self.val_harmful, "bypass", "bypass (all candidates)")
        return self.first_passing(eligible)

    def fast(self, eligible: list[Candidate], prior) -> Candidate | None:
        """Stages 0–3 of the module docstring: prior, screen, finalists, filters."""
        return self.first_passing_finalist(self.screened(eligible, prior))

    def by_prior(self, eligible: list[Candidate], prior) -> list[Candidate]:
        """Stage 0: the candidates the prior covers, best first by ``estimated_bypass = mean(s₀) + Δ/n``, with
        ``s₀`` the unintervened harmful val scores and ``Δ`` the first-order change of ``Σ s`` over the prior's
        ``n`` prompts."""
        with_prior = []
        if prior is not None:
            with self.timed("attribution estimate"):
                for c in eligible:
                    estimate = prior.estimate(self.plans[c.key].bypass)
                    if estimate is not None:
                        c.estimated_bypass = float(self.baseline.harmful_scores.mean()) + estimate / prior.n_prompts
                        with_prior.append(c)
        return sorted(with_prior, key=lambda c: c.estimated_bypass)

    def screened(self, eligible: list[Candidate], prior) -> list[Candidate]:
        """Stage 1: the ``screen_keep`` best by prior and every candidate without one, ranked by bypass on the
        ``screen_prompts`` most strongly refused val prompts; the rest follow in prior order."""
        keep = self.config.screen_keep
        by_prior = self.by_prior(eligible, prior)
        shortlist = by_prior[:keep] + [c for c in eligible if c not in by_prior]
        strongest = self.baseline.harmful_scores.argsort(descending=True)[: self.config.screen_prompts].tolist()
        self.score_bypass(shortlist, [self.val_harmful[i] for i in strongest], "screen_bypass", "screening")
        return sorted(shortlist, key=lambda c: c.screen_bypass) + by_prior[keep:]

    def first_passing_finalist(self, ranked: list[Candidate]) -> Candidate | None:
        """Stages 2–3: ``ranked`` in groups of ``finalists`` (the first ``max_checked`` only), each group's bypass on
        every harmful val prompt, then its filters in bypass order, until one passes."""
        config = self.config
        kl_screen = min(config.kl_screen_prompts, len(self.val_harmless))
        for start in range(0, min(len(ranked), config.max_checked), config.finalists):
            finalists = ranked[start : min(start + config.finalists, config.max_checked)]
            self.score_bypass(finalists, self.val_harmful, "bypass", "finalists")
            chosen = self.first_passing(finalists, kl_screen)
            if chosen:
                return chosen
        return None

    def first_passing(self, cands: list[Candidate], kl_screen: int = 0) -> Candidate | None:
        """The lowest-bypass candidate of ``cands`` that passes the filters (each is checked in that order)."""
        return next((c for c in sorted(cands, key=lambda c: c.bypass) if self.passes(c, kl_screen)), None)

    @contextmanager
    def timed(self, stage: str):
        start = time.perf_counter()
        yield
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

    def score_bypass(self, cands: list[Candidate], prompts: Sequence[str], attribute: str, label: str) -> None:
        """Set ``attribute`` of each candidate to its mean refusal score on ``prompts`` under its bypass plan,
        several candidates per forward pass."""
        if not cands:
            return
        with Progress(transient=True) as progress, self.timed(label):
            task = progress.add_task(f"{self.label} {label}", total=len(cands))
            chunk = max(1, self.config.batch_size // len(prompts))
            for start in range(0, len(cands), chunk):
                part = cands[start : start + chunk]
                means = batched_scores(self.lm, prompts, [self.plans[c.key].bypass for c in part],
                                       rows_per_pass=self.config.batch_size)[0].mean(-1)
                for c, value in zip(part, means.tolist()):
                    setattr(c, attribute, value)
                progress.advance(task, len(part))

    def passes(self, c: Candidate, kl_screen: int = 0) -> bool:
        """Whether ``c`` passes induce > ``induce_threshold`` and KL < ``kl_threshold`` (recorded in its status;
        a KL of ≥ 2× the bar on the first ``kl_screen`` harmless prompts rejects it before the induce check)."""
        plan, config = self.plans[c.key], self.config
        with self.timed("filters (induce, KL)"):
            cached = self.kl_cache.get(plan.kl_key) if plan.kl_key is not None else None
            screened = None
            if cached is None and kl_screen:
                screened = self.kl(c, 0, kl_screen)
                if float(screened.mean()) >= 2 * config.kl_threshold:
                    c.status = (f"filtered: KL >= {config.kl_threshold} "
                                f"(screened on {kl_screen} prompts: {float(screened.mean()):.2f})")
                    return False
            if plan.induce is not None and not self.induces(c, plan.induce):
                c.status = f"filtered: induce <= {config.induce_threshold}"
                return False
            c.kl = self.full_kl(c, screened, kl_screen) if cached is None else cached
            if not c.kl < config.kl_threshold:
                c.status = f"filtered: KL >= {config.kl_threshold}"
                return False
            relaxed = "" if math.isnan(c.induce_scale) or c.induce_scale == config.induce_scales[0] else \
                f" (induce at scale {c.induce_scale:g})"
            c.status = "passed" + relaxed
            return True

    def induces(self, c: Candidate, induce: dict[float, list[Intervention]]) -> bool:
        """Mean refusal score on the harmless val prompts under each scale's induce plan in turn, stopping at the
        first above ``induce_threshold``; the last one tried is recorded (``c.induce``, ``c.induce_scale``)."""
        for scale, ivs in induce.items():
            induced = last_token_logprobs(self.lm, self.val_harmless, ivs, self.config.batch_size)
            c.induce, c.induce_scale = float(refusal_scores(induced, self.lm.refusal_token_ids).mean()), scale
            if c.induce > self.config.induce_threshold:
                break
        return c.induce > self.config.induce_threshold

    def kl(self, c: Candidate, prompts_from: int, prompts_to: int) -> torch.Tensor:
        """Per-prompt ``KL(p_base ‖ p_plan)`` of the next token on harmless val prompts ``[prompts_from,
        prompts_to)``."""
        return kl_divergence(self.baseline.harmless_logprobs[prompts_from:prompts_to], last_token_logprobs(
            self.lm, self.val_harmless[prompts_from:prompts_to], self.plans[c.key].kl, self.config.batch_size))

    def full_kl(self, c: Candidate, screened: torch.Tensor | None, kl_screen: int) -> float:
        """Mean KL over every harmless val prompt, reusing the ``kl_screen`` already ``screened``; cached under
        the plan's ``kl_key``."""
        kl_key = self.plans[c.key].kl_key
        start = kl_screen if screened is not None else 0
        parts = [screened] if screened is not None else []
        if start < len(self.val_harmless):
            parts.append(self.kl(c, start, len(self.val_harmless)))
        mean = float(torch.cat(parts).mean())
        if kl_key is not None:
            self.kl_cache[kl_key] = mean
        return mean
