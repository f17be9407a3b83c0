"""Intervals and signed Δ for per-item metric values.

A metric is a statistic of per-item values: the mean (a rate when the values are 0/1, an accuracy, a mean KL), or
for perplexity ``exp(Σ nll / Σ tokens)`` over documents. Intervals are 95 %: Wilson for a rate (a metric in
:data:`RATES`, 0/1 items), a percentile bootstrap over items otherwise, and a *paired* percentile bootstrap (the same resampled items on both
sides) for a difference between two conditions scored on the same items (scipy.stats.bootstrap, seeded).

Δ follows the seed study: ``Δ = sign · clip(method − baseline, −1, 1)`` with ``sign`` chosen so that higher is
better for what the intervention is for (:func:`signed_delta`). Perplexity enters Δ as a relative change,
``(ppl_method − ppl_base) / ppl_base``, so that its clip at ±1 means "doubled", not "rose by one nat-unit".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from refusal_lab.evaluation.metrics import Rate

CONFIDENCE = 0.95
N_RESAMPLES = 2000

#: Whether a higher value of each metric is better, for an intervention meant to *remove* refusal (``bypass``).
#: For one meant to *induce* refusal the refusal-type metrics flip (see :data:`REFUSAL_TYPE`).
HIGHER_IS_BETTER = {"refusal": False, "harmless_refusal": False, "unsafe": True, "perplexity": False,
                    "mmlu": True, "arc": True, "kl": False, "kl_response": False, "repetition": False,
                    "coherence": True,
                    "first_token_refusal": False, "first_token_harmless_refusal": False, "landing": False,
                    "nearer_harmful": False}
# metrics whose better direction flips when the goal is to induce refusal (the landing ones: toward the harmful mean)
REFUSAL_TYPE = ("refusal", "harmless_refusal", "unsafe", "first_token_refusal", "first_token_harmless_refusal",
                "landing", "nearer_harmful")
RATES = ("refusal", "harmless_refusal", "unsafe", "coherence", "mmlu", "arc", "first_token_refusal",
         "first_token_harmless_refusal", "nearer_harmful")  # proportions of 0/1 items: Wilson


def _values(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def perplexity(nll: Sequence[float], tokens: Sequence[float]) -> float:
    """``exp(Σ nll / Σ tokens)`` over documents (per-document NLL sums and token counts)."""
    return float(math.exp(np.sum(nll) / np.sum(tokens)))


def _statistic(metric: str):
    """The statistic of a metric as a function of its per-item arrays, vectorised over a trailing axis."""
    if metric == "perplexity":
        return lambda nll, tokens, axis=-1: np.exp(np.sum(nll, axis=axis) / np.sum(tokens, axis=axis))
    return lambda values, axis=-1: np.mean(values, axis=axis)


def _is_binary(values: np.ndarray) -> bool:
    return bool(np.all((values == 0) | (values == 1)))


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int


def estimate(metric: str, values: Sequence[float], tokens: Sequence[float] | None = None,
             seed: int = 0) -> Estimate:
    """The metric's value with a 95 % interval: Wilson for a rate, else a percentile bootstrap over items
    (``tokens`` are the per-document token counts of a perplexity, ``values`` its per-document NLL sums)."""
    v = _values(values)
    if len(v) == 0 or np.isnan(v).all():  # NaN items: undefined (e.g. landing where the class means coincide)
        return Estimate(math.nan, math.nan, math.nan, len(v))
    if metric == "perplexity":
        t = _values(tokens)
        data, point = (v, t), perplexity(v, t)
    else:
        if metric in RATES and _is_binary(v):
            rate = Rate(int(v.sum()), len(v))
            low, high = rate.wilson()
            return Estimate(rate.value, low, high, len(v))
        data, point = (v,), float(v.mean())
    if len(v) < 2 or np.all(v == v[0]) and metric != "perplexity":
        return Estimate(point, point, point, len(v))
    return Estimate(point, *_percentile_interval(data, _statistic(metric), seed), len(v))


def difference(metric: str, method: Sequence[float], base: Sequence[float], method_tokens=None, base_tokens=None,
               seed: int = 0) -> Estimate:
    """``statistic(method) − statistic(base)`` on the same items (rows aligned), with a paired bootstrap 95 %
    interval. For perplexity the difference is relative, ``(ppl_m − ppl_b) / ppl_b``."""
    m, b = _values(method), _values(base)
    if len(m) != len(b):
        raise ValueError(f"paired difference needs the same items on both sides ({len(m)} vs {len(b)})")
    if np.isnan(m).all() or np.isnan(b).all():
        return Estimate(math.nan, math.nan, math.nan, len(m))
    if metric == "perplexity":
        mt, bt = _values(method_tokens), _values(base_tokens)

        def stat(m_, mt_, b_, bt_, axis=-1):
            base_ppl = np.exp(np.sum(b_, axis=axis) / np.sum(bt_, axis=axis))
            return np.exp(np.sum(m_, axis=axis) / np.sum(mt_, axis=axis)) / base_ppl - 1

        data = (m, mt, b, bt)
    else:
        def stat(m_, b_, axis=-1):
            return np.mean(m_, axis=axis) - np.mean(b_, axis=axis)

        data = (m, b)
    point = float(stat(*data))
    if len(m) < 2 or all(np.all(d == d[0]) for d in data):
        return Estimate(point, point, point, len(m))
    if np.allclose(m, b):  # identical items: every resample gives the same difference
        return Estimate(point, point, point, len(m))
    return Estimate(point, *_percentile_interval(data, stat, seed), len(m))


def _percentile_interval(data: tuple, statistic, seed: int) -> tuple[float, float]:
    """The paired percentile bootstrap 95 % interval of ``statistic`` over the items of ``data`` (seeded)."""
    # imported here, not at the top: scipy.stats is half a second of every CLI start
    from scipy.stats import bootstrap

    result = bootstrap(data, statistic, paired=True, vectorized=True, confidence_level=CONFIDENCE,
                       n_resamples=N_RESAMPLES, method="percentile", random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def goal_sign(metric: str, goal: str) -> int:
    """+1 if a higher value of ``metric`` is better for an intervention whose ``goal`` is ``bypass`` (remove
    refusal) or ``induce`` (add it), else −1. The baseline and capability metrics do not depend on the goal."""
    higher = HIGHER_IS_BETTER[metric]
    if goal == "induce" and metric in REFUSAL_TYPE:
        higher = not higher
    return 1 if higher else -1


def signed_delta(metric: str, goal: str, diff: Estimate) -> Estimate:
    """Δ = sign · clip(diff, −1, 1) and its interval (the bounds swap when the sign is negative)."""
    sign = goal_sign(metric, goal)

    def clip(x: float) -> float:
        return float(np.clip(sign * x, -1.0, 1.0))

    low, high = sorted((clip(diff.low), clip(diff.high)))
    return Estimate(clip(diff.value), low, high, diff.n)
