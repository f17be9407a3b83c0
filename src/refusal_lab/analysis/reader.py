"""How the findings read one model's evidence: its non-control interventions (:class:`Row`, from the stored kind,
scope and params, not the names), their per-item values for one judge and generation length, paired differences
of them, and the best row of a kind — among the rows that do not break the model (:mod:`refusal_lab.analysis
.coherence`).

A refusal rate is read with one *measure* (:data:`MEASURES`): ``first-token`` (refusal-token log-odds > 0 at the
first generated position — no generation, so the study can afford every held-out prompt) or ``generation`` (the
judged greedy response). The Reader keeps every rate difference it decides on (:attr:`Reader.compared`), so a
finding can say its ``n`` and the smallest paired difference it could detect there (:func:`detectable`)."""

from __future__ import annotations

import json
import math
from functools import reduce
from typing import NamedTuple

import pandas as pd

from refusal_lab.analysis.coherence import broken
from refusal_lab.analysis.evidence import ModelEvidence
from refusal_lab.core.vocabulary import BASELINE
from refusal_lab.evaluation.stats import Estimate, difference

MEASURES = {"first-token": ("first_token_refusal", "first_token_harmless_refusal"),
            "generation": ("refusal", "harmless_refusal")}  # measure → (harmful-side, harmless-side rate metric)
COMPLIANCE = "unsafe"  # the suite's unsafe metric: llm-judged compliance on harmful requests without a guard
DETECTABLE_Z = 1.96 + 0.84  # a two-sided 5 % test with 80 % power: the effect is this many standard errors
FLIP_ALPHA = 2.0  # 3, 5: the flip the findings are about (rows naming another alpha are left out)
REFUSAL_METRICS = ("refusal", "harmless_refusal")  # read per judge and length (``tokens``); the rest at one
_ITEM_COLUMNS = ("intervention", "metric", "judge", "dataset", "max_new_tokens", "item", "value", "tokens")


class Row(NamedTuple):
    """A non-control intervention as the results store records it: its name (a label), kind, scope and the
    builder's settings (``params``: k, alpha, scale, order, center, …)."""

    name: str
    kind: str
    scope: str
    params: dict

    @property
    def centered(self) -> bool:
        return bool(self.params.get("center", False))

    @property
    def linear(self) -> bool:
        """Not fitted through the training mean, and a flip only at :data:`FLIP_ALPHA`."""
        return not self.centered and float(self.params.get("alpha", FLIP_ALPHA)) == FLIP_ALPHA


def interventions(table: pd.DataFrame) -> list[Row]:
    """The non-control interventions of a results (or landing) table, one :class:`Row` each."""
    if table.empty:
        return []
    rows = table[(table["kind"] != BASELINE) & ~table.get("control", pd.Series(False, index=table.index)).astype(bool)]
    unique = rows.drop_duplicates("intervention")
    return [Row(r["intervention"], r["kind"], r.get("scope", ""), json.loads(r["params"]))
            for r in unique.to_dict("records")]


class Reader:
    """Per-item values of the evidence for one judge and generation length, paired differences of them, and which
    interventions break the model (``broken``: name → why, from :func:`refusal_lab.analysis.coherence.broken`)."""

    def __init__(self, evidence: ModelEvidence, judge: str, tokens: int | None, measure: str = "generation"):
        self.ev, self.judge, self.tokens = evidence, judge, tokens
        self.items = evidence.items if not evidence.items.empty else pd.DataFrame(columns=_ITEM_COLUMNS)
        with_items = set(self.items["intervention"])
        self.rows = [r for r in interventions(evidence.results) if r.name in with_items]
        self.broken = broken(evidence.results)
        if measure == "first-token" and MEASURES[measure][0] not in set(self.items["metric"]):
            measure = "generation"  # not measured in this study: the judged responses
        self.measure = measure
        self.refusal_metric, self.harmless_metric = MEASURES[measure]
        self.compared: list[Estimate] = []  # every rate difference a decision read (see detectable)

    def describe(self) -> str:
        """The refusal measure in words."""
        if self.measure == "first-token":
            return "first-token refusal (refusal-token log-odds > 0; no generation)"
        return f"judged refusal of the greedy response ({self.judge}, {self.tokens or 'longest'} tokens)"

    def of(self, kind: str) -> list[Row]:
        """Linear non-control rows of ``kind`` with items (:attr:`Row.linear`)."""
        return sorted((r for r in self.rows if r.kind == kind and r.linear), key=lambda r: r.name)

    def values(self, name: str, metric: str, dataset: str) -> pd.DataFrame | None:
        t = self.items
        sel = t[(t["intervention"] == name) & (t["metric"] == metric) & (t["dataset"] == dataset)]
        if metric in REFUSAL_METRICS:
            sel = sel[sel["judge"] == self.judge]
        length = self.tokens if self.tokens is not None and metric in REFUSAL_METRICS else sel["max_new_tokens"].max()
        sel = sel[sel["max_new_tokens"] == length]
        return None if sel.empty else sel.drop_duplicates("item").set_index("item")[["value", "tokens"]]

    def diff(self, method: str, base: str | dict[str, float] = "baseline", metric: str | None = None,
             dataset: str = "harmful", record: bool = True) -> Estimate | None:
        """``metric(method) − metric(base)`` on their common items (``metric``: default the measure's refusal rate);
        ``base`` may be a weighted per-item mix ``{name: weight}`` of rows (not for perplexity). None when a side
        has no items. A rate difference is kept in :attr:`compared` unless ``record`` is False."""
        metric = metric or self.refusal_metric
        found = self._diff(method, base, metric, dataset)
        if record and found is not None and metric in (self.refusal_metric, self.harmless_metric, COMPLIANCE):
            self.compared.append(found)
        return found

    def _diff(self, method: str, base: str | dict[str, float], metric: str, dataset: str) -> Estimate | None:
        weights = {base: 1.0} if isinstance(base, str) else base
        frames = [self.values(n, metric, dataset) for n in (method, *weights)]
        if any(f is None for f in frames):
            return None
        if len(common := reduce(pd.Index.intersection, (f.index for f in frames))) == 0:
            return None
        m, *bases = [f.loc[common] for f in frames]
        if metric == "perplexity":
            return difference(metric, m["value"], bases[0]["value"], m["tokens"], bases[0]["tokens"])
        mix = sum(w * b["value"].to_numpy() for w, b in zip(weights.values(), bases))
        return difference(metric, m["value"].to_numpy(), mix)

    def best(self, rows: list[Row]) -> tuple[Row, Estimate] | None:
        """The row with the largest point reduction of refusal on harmful prompts, and its difference vs baseline,
        among the rows that do not break the model."""
        scored = [(r, e) for r in rows if r.name not in self.broken and (e := self.diff(r.name, record=False))
                  is not None and not math.isnan(e.value)]
        if not scored:
            return None
        best = min(scored, key=lambda pair: pair[1].value)
        self.compared.append(best[1])
        return best

    def complied(self, *names: str) -> bool:
        """Every named row has llm-judged compliance items on harmful requests."""
        t = self.items
        judged = t[(t["metric"] == COMPLIANCE) & t["judge"].astype(str).str.startswith("llm")]
        return all(name in set(judged["intervention"]) for name in names)

    def only_broken(self, rows: list[Row]) -> bool:
        """There are rows, and every one breaks the model."""
        return bool(rows) and all(r.name in self.broken for r in rows)

    def gate_notes(self, rows: list[Row]) -> list[str]:
        """A note per row that breaks the model: its name and why; its suppression is not counted."""
        return [f"{r.name} breaks the model ({self.broken[r.name]}): not counted" for r in rows
                if r.name in self.broken]

    def perplexity(self, name: str, numbers: dict) -> list[Estimate]:
        """``name``'s relative perplexity change vs baseline on every text set (recorded in ``numbers``)."""
        found = []
        for dataset in sorted(self.items.loc[self.items["metric"] == "perplexity", "dataset"].unique()):
            if (e := self.diff(name, metric="perplexity", dataset=dataset)) is not None:
                numbers[f"perplexity ({dataset}): {name} relative change"] = [e.value, e.low, e.high]
                found.append(e)
        return found

    def specific(self, name: str) -> bool | None:
        """The results row's ``specific`` flag (effect beyond its random controls) for the measure's refusal on
        harmful."""
        r = self.ev.results
        if r.empty or "specific" not in r:
            return None
        r = r[(r["intervention"] == name) & (r["metric"] == self.refusal_metric) & (r["dataset"] == "harmful")]
        if self.measure == "generation":
            r = r[r["judge"] == self.judge]
        length = self.tokens if self.tokens and self.measure == "generation" else r["max_new_tokens"].max()
        flags = r.loc[r["max_new_tokens"] == length, "specific"].dropna()
        return None if flags.empty else bool(flags.iloc[0])


def detectable(e: Estimate) -> float:
    """The smallest paired rate difference a two-sided 5 % test detects with 80 % power at ``e``'s items:
    :data:`DETECTABLE_Z` standard errors, the standard error read from the 95 % interval (width / 3.92); for an
    interval of zero width (no discordant pair) the worst case at a rate of ½, ``DETECTABLE_Z · ½ / √n``."""
    se = (e.high - e.low) / (2 * 1.96)
    return DETECTABLE_Z * (se if se > 0 else 0.5 / math.sqrt(max(e.n, 1)))


__all__ = ["COMPLIANCE", "DETECTABLE_Z", "FLIP_ALPHA", "MEASURES", "REFUSAL_METRICS", "Reader", "Row", "detectable",
           "interventions"]
