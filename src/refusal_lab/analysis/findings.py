"""The seven findings of DESIGN.md, decided from one model's :class:`~refusal_lab.analysis.evidence.ModelEvidence`.

Every finding is a conjunction of *parts*; a part is True (shown), False (contradicted) or None (its rows are missing,
or its 95 % interval straddles the threshold). Verdict: "supported" when every part is True, "not supported" when any
part is False, else "inconclusive" — a point estimate whose interval straddles a threshold never decides a part.

Refusal figures are rates on the held-out prompts — metric ``refusal`` on ``harmful`` (bypass rows), and
``harmless_refusal`` on ``harmless`` (induce rows) — for one judge and one generation length (``tokens``; default the
longest stored), and every comparison is a paired difference on the same items
(:func:`refusal_lab.evaluation.stats.difference`, aligned by ``item``; relative for perplexity). A row's *reduction*
is baseline − row; the *best* row of a kind is its non-control row with the largest point reduction. INLP rows fitted
through the training mean (``,centered``) are left out: the findings are about the linear maps ``P`` and ``P_α``.
The rule of each finding is in its function's docstring and, in one sentence, in :attr:`Finding.test`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from refusal_lab.analysis.evidence import ModelEvidence
from refusal_lab.evaluation.stats import Estimate, difference

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)

CLOSE_COSINE = 0.8  # 1: |cos(first INLP direction, DiM)| at the chosen layer is "close" at or above this
EQUIVALENCE_MARGIN = 0.15  # 1: two ActAdds agree when their paired rate difference's CI lies inside ±this
COMPETITIVE_MARGIN = 0.15  # 3: flip is competitive when flip − ablate refusal has CI high ≤ this
FLIP_ALPHA = 2.0  # 3, 5: the flip the findings are about (rows naming another alpha are left out)
KEEP_SHARE = 0.8  # 4: rank-k "keeps most" of the suppression at this share of the full nullspace's reduction
NEAR_BASELINE_PERPLEXITY = 0.05  # 3, 4: a relative perplexity rise below this (CI high) is near baseline
NEGLIGIBLE_REPETITION = 0.02  # 3: a repeated-3-gram rise below this (CI high) is no repetition
BETWEEN = (0.2, 0.8)  # 5: landing fraction interval inside this = between the clusters
OPPOSITE_FRACTION = 0.8  # 5: landing fraction CI low at or above this = in the opposite cluster
OPPOSITE_NEARER = 0.5  # 5: ... or at least this share of harmful rows nearer the harmless mean
SUBSPACE_KS = (3, 5)  # 6: the stacked-subspace sizes compared with the best single direction
PERSISTENCE_COSINE = 0.5  # 6: mean cos(chosen layer's DiM, each later layer's) at or above this = persists
BATCHED_COSINE = 0.99  # 7: batched vs one-by-one DiM cosine at the chosen layer
MATCHED_COSINE = 0.9  # 7: confound-matched vs unmatched DiM cosine at the chosen layer

TITLES = {
    1: "The first INLP direction is close to the DiM direction (cosine), and INLP-derived ActAdd ≈ DiM ActAdd.",
    2: "Nullspace projection suppresses refusal, but less reliably than DiM directional ablation.",
    3: "Flipping (α = 2) is competitive at suppression yet overcorrects: perplexity rises, text may repeat.",
    4: "Restricting INLP to its leading k directions keeps most of the suppression at near-baseline perplexity.",
    5: "Geometry: nullspace projection lands harmful activations between the clusters; flipping lands them in the "
       "opposite cluster.",
    6: "Some models keep refusal in a low-rank subspace: stacking the top-k layers' DiM directions (QR) beats the "
       "best single direction there; cross-layer cosine heatmaps show whether one direction persists across layers.",
    7: "Batched vs one-by-one extraction and confound-matched vs unmatched prompt pairs change the direction only "
       "slightly (report the cosine).",
}
_LENGTH_METRICS = ("refusal", "harmless_refusal")  # judged at every generation length; the rest at one
_NAME = re.compile(r"^(?P<kind>[a-z-]+)\[(?P<inside>[^\]]*)\]$")


@dataclass
class Finding:
    """One finding's verdict for one model; ``numbers`` holds the figures behind it, intervals as [value, low, high]."""

    id: int
    title: str
    verdict: str
    test: str
    numbers: dict = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Row:
    """A parsed intervention name ``kind[scope,name=value,...,centered]`` (controls end in ``~random<seed>``)."""

    name: str
    kind: str
    scope: str
    params: dict
    centered: bool


def parse(name: str) -> Row | None:
    """The parts of a non-control intervention name; None for a control, the baseline or an unknown shape."""
    match = _NAME.match(name)
    if "~" in name or match is None:
        return None
    scope, *rest = match["inside"].split(",")
    params = dict(part.split("=", 1) for part in rest if "=" in part)
    return Row(name, match["kind"], scope, params, "centered" in rest)


def _linear(row: Row) -> bool:
    """Not fitted through the training mean, and a flip only at :data:`FLIP_ALPHA`."""
    alpha = row.params.get("alpha")
    return not row.centered and (alpha is None or float(alpha) == FLIP_ALPHA)


def _iv(e: Estimate) -> list[float]:
    return [e.value, e.low, e.high]


def _verdict(*parts: bool | None) -> str:
    if any(p is False for p in parts):
        return NOT_SUPPORTED
    return SUPPORTED if parts and all(p is True for p in parts) else INCONCLUSIVE


def _all(parts: list[bool | None]) -> bool | None:
    """Several rows of one part: False if any is False, True if all are True, else None (also when there are none)."""
    return False if False in parts else (True if parts and all(parts) else None)


class _Reader:
    """Per-item values of the evidence for one judge and generation length, and paired differences of them."""

    def __init__(self, evidence: ModelEvidence, judge: str, tokens: int | None):
        self.ev, self.judge, self.tokens, self.items = evidence, judge, tokens, evidence.items
        names = self.items["intervention"].unique() if not self.items.empty else []
        self.rows = [r for r in map(parse, names) if r is not None]

    def of(self, kind: str) -> list[Row]:
        """Linear non-control rows of ``kind`` with items (:func:`_linear`)."""
        return sorted((r for r in self.rows if r.kind == kind and _linear(r)), key=lambda r: r.name)

    def values(self, name: str, metric: str, dataset: str) -> pd.DataFrame | None:
        t = self.items
        if t.empty:
            return None
        sel = t[(t["intervention"] == name) & (t["metric"] == metric) & (t["dataset"] == dataset)]
        if metric in _LENGTH_METRICS:
            sel = sel[sel["judge"] == self.judge]
        if sel.empty:
            return None
        length = self.tokens if self.tokens is not None and metric in _LENGTH_METRICS else sel["max_new_tokens"].max()
        sel = sel[sel["max_new_tokens"] == length]
        return None if sel.empty else sel.drop_duplicates("item").set_index("item")[["value", "tokens"]]

    def diff(self, method: str, base: str | dict[str, float] = "baseline", metric: str = "refusal",
             dataset: str = "harmful") -> Estimate | None:
        """``metric(method) − metric(base)`` on their common items; ``base`` may be a weighted per-item mix
        ``{name: weight}`` of rows (not for perplexity). None when any side has no items."""
        weights = {base: 1.0} if isinstance(base, str) else base
        frames = [self.values(n, metric, dataset) for n in (method, *weights)]
        if any(f is None for f in frames):
            return None
        common = frames[0].index
        for f in frames[1:]:
            common = common.intersection(f.index)
        if len(common) == 0:
            return None
        m, *bases = [f.loc[common] for f in frames]
        if metric == "perplexity":
            if len(bases) != 1:
                raise ValueError("a perplexity difference takes one base row")
            return difference(metric, m["value"], bases[0]["value"], m["tokens"], bases[0]["tokens"])
        mix = sum(w * b["value"].to_numpy() for w, b in zip(weights.values(), bases))
        return difference(metric, m["value"].to_numpy(), mix)

    def best(self, rows: list[Row]) -> tuple[Row, Estimate] | None:
        """The row with the largest point reduction of refusal on harmful prompts, and its difference vs baseline."""
        scored = [(r, e) for r in rows if (e := self.diff(r.name)) is not None and not math.isnan(e.value)]
        return min(scored, key=lambda pair: pair[1].value) if scored else None

    def datasets(self, metric: str) -> list[str]:
        return sorted(self.items.loc[self.items["metric"] == metric, "dataset"].unique()) if not self.items.empty \
            else []

    def specific(self, name: str) -> bool | None:
        """The results row's ``specific`` flag (effect beyond its random controls) for refusal on harmful."""
        r = self.ev.results
        if r.empty or "specific" not in r:
            return None
        sel = r[(r["intervention"] == name) & (r["metric"] == "refusal") & (r["dataset"] == "harmful")
                & (r["judge"] == self.judge)]
        if self.tokens is not None:
            sel = sel[sel["max_new_tokens"] == self.tokens]
        sel = sel.sort_values("max_new_tokens")["specific"].dropna()
        return None if sel.empty else bool(sel.iloc[-1])


def _first_inlp_vs_dim(ev: ModelEvidence, rd: _Reader) -> Finding:
    """|cos| at the chosen layer ≥ CLOSE_COSINE, and every classifier-ActAdd row ≈ its DiM ActAdd row of the same
    scope and scale (paired refusal difference, CI inside ±EQUIVALENCE_MARGIN; a CI excluding 0 with |Δ| beyond the
    margin contradicts)."""
    numbers: dict = {}
    close = None
    table = ev.inlp_dim_cosine
    if not table.empty and (at := table[table["layer"] == ev.layer]["cosine"].dropna()).size:
        numbers[f"cosine at layer {ev.layer}"] = cosine = float(at.iloc[0])
        close = abs(cosine) >= CLOSE_COSINE
    agree = []
    for row in rd.of("classifier-actadd"):
        dim = "actadd" + row.name[len("classifier-actadd"):]
        induce = float(row.params.get("scale", -1)) > 0
        metric, dataset = ("harmless_refusal", "harmless") if induce else ("refusal", "harmful")
        if (e := rd.diff(row.name, dim, metric, dataset)) is None:
            continue
        numbers[f"{metric}: {row.name} − {dim}"] = _iv(e)
        inside = -EQUIVALENCE_MARGIN <= e.low and e.high <= EQUIVALENCE_MARGIN
        apart = (e.low > 0 or e.high < 0) and abs(e.value) > EQUIVALENCE_MARGIN
        agree.append(True if inside else (False if apart else None))
    return Finding(1, TITLES[1], _verdict(close, _all(agree)),
                   f"|cos| at layer {ev.layer} ≥ {CLOSE_COSINE}, and every classifier-ActAdd − DiM ActAdd paired "
                   f"refusal-rate difference has its 95 % CI inside ±{EQUIVALENCE_MARGIN}.", numbers,
                   "" if agree else "no classifier-actadd / actadd pair with items")


def _nullspace_vs_ablation(ev: ModelEvidence, rd: _Reader) -> Finding:
    """The best nullspace row suppresses (refusal − baseline CI high < 0, and its effect is specific where the
    controls were scored), and less reliably than the best ablate row (nullspace − ablate CI low > 0; CI high < 0
    or a CI inside ±EQUIVALENCE_MARGIN contradicts)."""
    null, ablate = rd.best(rd.of("nullspace")), rd.best(rd.of("ablate"))
    numbers, notes, suppresses, weaker = {}, [], None, None
    if null is not None:
        row, e = null
        numbers[f"refusal: {row.name} − baseline"] = _iv(e)
        suppresses = True if e.high < 0 else (False if e.low >= 0 else None)
        if suppresses and rd.specific(row.name) is False:
            suppresses = None
            notes.append(f"{row.name}'s random control suppresses as much")
    if null is not None and ablate is not None:
        numbers[f"refusal: {ablate[0].name} − baseline"] = _iv(ablate[1])
        if (e := rd.diff(null[0].name, ablate[0].name)) is not None:
            numbers[f"refusal: {null[0].name} − {ablate[0].name}"] = _iv(e)
            equal = -EQUIVALENCE_MARGIN <= e.low and e.high <= EQUIVALENCE_MARGIN
            weaker = True if e.low > 0 else (False if e.high < 0 or equal else None)
    if null is None or ablate is None:
        notes.append("missing nullspace or ablate refusal items")
    return Finding(2, TITLES[2], _verdict(suppresses, weaker),
                   "The best nullspace row's refusal − baseline has 95 % CI high < 0, and nullspace − best ablate "
                   "(paired) has CI low > 0.", numbers, "; ".join(notes))


def _flip(ev: ModelEvidence, rd: _Reader) -> Finding:
    """The best flip row (α = FLIP_ALPHA, either variant) is competitive (flip − best ablate refusal CI high ≤
    COMPETITIVE_MARGIN; CI low above it contradicts) and overcorrects (relative perplexity rise CI low > 0 on any text
    set, or repetition rise CI low > 0; every perplexity CI high < NEAR_BASELINE_PERPLEXITY and repetition CI high <
    NEGLIGIBLE_REPETITION contradicts)."""
    flip, ablate = rd.best(rd.of("flip")), rd.best(rd.of("ablate"))
    numbers, competitive, overcorrects = {}, None, None
    if flip is None:
        return Finding(3, TITLES[3], INCONCLUSIVE, _FLIP_TEST, {}, "missing flip refusal items")
    name = flip[0].name
    numbers[f"refusal: {name} − baseline"] = _iv(flip[1])
    if ablate is not None and (e := rd.diff(name, ablate[0].name)) is not None:
        numbers[f"refusal: {name} − {ablate[0].name}"] = _iv(e)
        competitive = True if e.high <= COMPETITIVE_MARGIN else (False if e.low > COMPETITIVE_MARGIN else None)
    rises, flat = [], []
    for dataset in rd.datasets("perplexity"):
        if (e := rd.diff(name, metric="perplexity", dataset=dataset)) is not None:
            numbers[f"perplexity ({dataset}): relative change"] = _iv(e)
            rises.append(e.low > 0)
            flat.append(e.high < NEAR_BASELINE_PERPLEXITY)
    if (e := rd.diff(name, metric="repetition", dataset="both")) is not None:
        numbers["repetition: change"] = _iv(e)
        rises.append(e.low > 0)
        flat.append(e.high < NEGLIGIBLE_REPETITION)
    if any(rises):
        overcorrects = True
    elif flat and all(flat) and any(k.startswith("perplexity") for k in numbers):
        overcorrects = False
    return Finding(3, TITLES[3], _verdict(competitive, overcorrects), _FLIP_TEST, numbers,
                   "" if rises else "no perplexity or repetition items for the flip")


_FLIP_TEST = (f"The best α = {FLIP_ALPHA:g} flip's paired refusal difference to the best ablation has 95 % CI high "
              f"≤ {COMPETITIVE_MARGIN}, and its perplexity (any text set, relative) or repetition rise has CI low > 0.")


def _rank_k(ev: ModelEvidence, rd: _Reader) -> Finding:
    """Per (scope, order) sweep with at least two k: k keeps most of the suppression when rank-k − (KEEP_SHARE ·
    nullspace + (1 − KEEP_SHARE) · baseline) has CI high ≤ 0 (CI low > 0 contradicts), at near-baseline perplexity
    (every text set's relative rise CI high < NEAR_BASELINE_PERPLEXITY; CI low ≥ it contradicts). Supported when the
    smallest such k is below the largest k swept (the INLP rank) in some sweep whose full nullspace suppresses (CI
    high < 0); not supported when every sweep contradicts every k below its largest."""
    groups: dict[tuple[str, str], dict[int, Row]] = {}
    for row in rd.of("rank-k"):
        groups.setdefault((row.scope, row.params.get("order", "")), {})[int(row.params["k"])] = row
    numbers, states, notes = {}, [], []
    for (scope, order), by_k in sorted(groups.items()):
        full = rd.diff(f"nullspace[{scope}]")
        if len(by_k) < 2 or full is None:
            continue
        numbers[f"refusal: nullspace[{scope}] − baseline"] = _iv(full)
        if not full.high < 0:
            notes.append(f"nullspace[{scope}] does not clearly suppress: nothing to keep")
            states.append(None)
            continue
        rank, ks = max(by_k), []
        for k in sorted(by_k)[:-1]:
            name = by_k[k].name
            keep_e = rd.diff(name, {f"nullspace[{scope}]": KEEP_SHARE, "baseline": 1 - KEEP_SHARE})
            keep = None if keep_e is None else (True if keep_e.high <= 0 else (False if keep_e.low > 0 else None))
            if keep_e is not None:
                numbers[f"refusal: {name} − {KEEP_SHARE:g}·nullspace[{scope}] − {1 - KEEP_SHARE:g}·baseline"] = \
                    _iv(keep_e)
            ppl = []
            for dataset in rd.datasets("perplexity"):
                if (e := rd.diff(name, metric="perplexity", dataset=dataset)) is not None:
                    numbers[f"perplexity ({dataset}): {name} relative change"] = _iv(e)
                    ppl.append(True if e.high < NEAR_BASELINE_PERPLEXITY else
                               (False if e.low >= NEAR_BASELINE_PERPLEXITY else None))
            ks.append((k, _all([keep, _all(ppl)]) if keep is not False else False))
        found = next((k for k, ok in ks if ok), None)
        if found is not None:
            numbers[f"smallest k ({scope}, {order})"] = found
            numbers[f"INLP rank ({scope}, {order})"] = rank
        states.append(True if found is not None else (False if all(ok is False for _, ok in ks) else None))
    verdict = SUPPORTED if True in states else (NOT_SUPPORTED if states and all(s is False for s in states)
                                                else INCONCLUSIVE)
    if not states:
        notes.append("no rank-k sweep (two or more k) with its nullspace row and items")
    return Finding(4, TITLES[4], verdict,
                   f"Some k below the INLP rank has rank-k refusal ≤ {KEEP_SHARE:g}·nullspace + "
                   f"{1 - KEEP_SHARE:g}·baseline (paired, CI high ≤ 0) and a relative perplexity rise with CI high "
                   f"< {NEAR_BASELINE_PERPLEXITY} on every text set.", numbers, "; ".join(notes))


def _landing(ev: ModelEvidence, rd: _Reader) -> Finding:
    """``fraction`` is how far the harmful mean moved from the harmful towards the harmless cluster (0 = stays,
    1 = at the harmless mean). Every linear nullspace row: CI inside BETWEEN = between (CI wholly outside
    contradicts); the flip row with the largest fraction: CI low ≥ OPPOSITE_FRACTION or nearer_harmless ≥
    OPPOSITE_NEARER = in the opposite cluster (CI high < OPPOSITE_FRACTION and nearer_harmless below contradicts)."""
    table, numbers = ev.landing, {}
    rows = {} if table.empty else {r["intervention"]: r for r in table.to_dict("records")}
    nulls = _landing_rows(rows, "nullspace")
    between = []
    for r in nulls:
        low, high = r["fraction_ci_low"], r["fraction_ci_high"]
        numbers[f"landing fraction: {r['intervention']}"] = [r["fraction"], low, high]
        between.append(True if BETWEEN[0] < low and high < BETWEEN[1] else
                       (False if high <= BETWEEN[0] or low >= BETWEEN[1] else None))
    flips = _landing_rows(rows, "flip")
    opposite = None
    if flips:
        r = max(flips, key=lambda r: r["fraction"])
        numbers[f"landing fraction: {r['intervention']}"] = [r["fraction"], r["fraction_ci_low"], r["fraction_ci_high"]]
        numbers[f"nearer harmless: {r['intervention']}"] = r["nearer_harmless"]
        near = r["nearer_harmless"] >= OPPOSITE_NEARER
        opposite = True if r["fraction_ci_low"] >= OPPOSITE_FRACTION or near else (
            False if r["fraction_ci_high"] < OPPOSITE_FRACTION and r["nearer_harmless"] < OPPOSITE_NEARER else None)
    note = f"landing at layer {ev.landing_layer}" + ("" if nulls and flips else "; missing nullspace or flip rows")
    return Finding(5, TITLES[5], _verdict(_all(between), opposite),
                   f"Every nullspace landing-fraction CI lies inside {BETWEEN}, and the best flip's has CI low ≥ "
                   f"{OPPOSITE_FRACTION} or ≥ {OPPOSITE_NEARER:g} of its rows nearer the harmless mean.", numbers,
                   note)


def _landing_rows(rows: dict[str, dict], kind: str) -> list[dict]:
    """Landing records of linear non-control rows of ``kind`` with a finite fraction interval."""
    out = []
    for name, r in sorted(rows.items()):
        p = parse(name)
        if p is None or p.kind != kind or not _linear(p):
            continue
        if all(np.isfinite([r["fraction"], r["fraction_ci_low"], r["fraction_ci_high"]])):
            out.append(r)
    return out


def _low_rank(ev: ModelEvidence, rd: _Reader) -> Finding:
    """Best stacked subspace (k in SUBSPACE_KS, or unnamed k) − best ablate refusal, paired: CI high < 0 supported,
    CI low > 0 not supported. Persistence (reported, not voted): the mean DiM cosine between the chosen layer and
    each later layer, ≥ PERSISTENCE_COSINE = one direction persists."""
    rows = [r for r in rd.of("subspace") if "k" not in r.params or int(r.params["k"]) in SUBSPACE_KS]
    sub, ablate = rd.best(rows), rd.best(rd.of("ablate"))
    numbers, notes, beats = {}, [], None
    if sub is not None and ablate is not None and (e := rd.diff(sub[0].name, ablate[0].name)) is not None:
        numbers[f"refusal: {sub[0].name} − {ablate[0].name}"] = _iv(e)
        beats = True if e.high < 0 else (False if e.low > 0 else None)
    else:
        notes.append("missing subspace or ablate refusal items")
    heat = ev.heatmaps.get("dim")
    if heat is not None and ev.layer + 1 < len(heat):
        persistence = float(np.mean(np.asarray(heat)[ev.layer, ev.layer + 1:]))
        numbers[f"mean DiM cosine, layer {ev.layer} vs later layers"] = persistence
        notes.append(("one direction persists" if persistence >= PERSISTENCE_COSINE else "the direction does not "
                      "persist") + f" across later layers (threshold {PERSISTENCE_COSINE})")
    return Finding(6, TITLES[6], _verdict(beats),
                   "The best stacked subspace's paired refusal difference to the best single-direction ablation "
                   "has 95 % CI high < 0.", numbers, "; ".join(notes))


def _sensitivity(ev: ModelEvidence, rd: _Reader) -> Finding:
    """At the chosen layer: batched_vs_single ≥ BATCHED_COSINE and matched_vs_unmatched ≥ MATCHED_COSINE (cosines
    are deterministic: no interval); a missing one leaves its part undecided."""
    table, numbers, parts = ev.sensitivity, {}, []
    at = table[table["layer"] == ev.layer] if not table.empty else table
    for column, threshold in (("batched_vs_single", BATCHED_COSINE), ("matched_vs_unmatched", MATCHED_COSINE)):
        values = at[column].dropna() if column in at else pd.Series(dtype=float)
        if values.empty:
            parts.append(None)
            continue
        numbers[f"{column} cosine at layer {ev.layer}"] = value = float(values.iloc[0])
        parts.append(value >= threshold)
    return Finding(7, TITLES[7], _verdict(*parts),
                   f"At layer {ev.layer}, the batched-vs-single cosine ≥ {BATCHED_COSINE} and the matched-vs-"
                   f"unmatched cosine ≥ {MATCHED_COSINE}.", numbers, "" if None not in parts else "missing cosines")


_RULES: tuple[Callable[[ModelEvidence, _Reader], Finding], ...] = (
    _first_inlp_vs_dim, _nullspace_vs_ablation, _flip, _rank_k, _landing, _low_rank, _sensitivity)


def assess(evidence: ModelEvidence, judge: str = "substring", tokens: int | None = None) -> list[Finding]:
    """The seven findings for one model, from refusal judged by ``judge`` at ``tokens`` new tokens (None: the
    longest stored length)."""
    reader = _Reader(evidence, judge, tokens)
    return [rule(evidence, reader) for rule in _RULES]


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


THRESHOLDS = {"CLOSE_COSINE": CLOSE_COSINE, "EQUIVALENCE_MARGIN": EQUIVALENCE_MARGIN,
              "COMPETITIVE_MARGIN": COMPETITIVE_MARGIN, "FLIP_ALPHA": FLIP_ALPHA, "KEEP_SHARE": KEEP_SHARE,
              "NEAR_BASELINE_PERPLEXITY": NEAR_BASELINE_PERPLEXITY, "NEGLIGIBLE_REPETITION": NEGLIGIBLE_REPETITION,
              "BETWEEN": BETWEEN, "OPPOSITE_FRACTION": OPPOSITE_FRACTION, "OPPOSITE_NEARER": OPPOSITE_NEARER,
              "SUBSPACE_KS": SUBSPACE_KS, "PERSISTENCE_COSINE": PERSISTENCE_COSINE, "BATCHED_COSINE": BATCHED_COSINE,
              "MATCHED_COSINE": MATCHED_COSINE}


def findings_json(evidences: list[ModelEvidence], findings_by_model: dict[str, list[Finding]]) -> dict:
    """``{"thresholds", "models": {model: {n_layers, layer, position, landing_layer, findings: [...]}}}``, JSON-safe
    (NaN and ±inf → None, numpy scalars → Python)."""
    models = {ev.model: {"n_layers": ev.n_layers, "layer": ev.layer, "position": ev.position,
                         "landing_layer": ev.landing_layer,
                         "findings": [asdict(f) for f in findings_by_model.get(ev.model, [])]} for ev in evidences}
    return _json_safe({"thresholds": THRESHOLDS, "models": models})


__all__ = ["Finding", "THRESHOLDS", "TITLES", "VERDICTS", "assess", "findings_json", "parse"]
