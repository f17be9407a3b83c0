"""The study report: ``RUN_DIR/report.html`` (one self-contained file) and ``RUN_DIR/findings.json``.

Self-contained means the page makes no request but for itself: every figure is a PNG embedded as a base64 ``data:``
URI, the style sheet is inline, there is no script, font, link or external address. Every piece of text from the
evidence, the findings, the captions and ``meta`` is HTML-escaped.

Per model, in order: a header (model, data hash, config, code version, date, the chosen layer and position), the
first figure of the model's list (the Δ-vs-baseline figure), the conditions that break the model and why, the rates
on harmful requests by judge (the substring rate beside the llm judge's), the results table (non-control,
non-baseline rows, a column saying which break the model), the other figures with their captions, and the findings
(verdict badge, the rule, the numbers with their intervals, the note). A verdict summary across models, the
coherence gate's rule with its bounds (:mod:`refusal_lab.analysis.coherence`) and a Judges section (each judge's
recorded agreement with human labels, ``meta["agreement"]``, and the rule that produced each unsafe rate) open the
page.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from refusal_lab.analysis.coherence import BROKEN_LABEL, bounds_text, broken
from refusal_lab.analysis.evidence import ModelEvidence
from refusal_lab.analysis.findings import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, TITLES, Finding, findings_json
from refusal_lab.evaluation.judgement import unsafe_rule

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BADGE = {SUPPORTED: "supported", NOT_SUPPORTED: "not-supported", INCONCLUSIVE: "inconclusive"}  # CSS classes
HEADER_KEYS = ("model", "data_hash", "config", "code_version", "date")  # shown first, in this order
METRIC_ORDER = ("refusal", "harmless_refusal", "unsafe", "coherence", "repetition", "kl", "kl_response", "perplexity",
                "mmlu", "arc")  # the results table's row order (then by dataset, judge, length, family, name)

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1280px; padding: 24px 24px 64px; color: var(--fg); background: #fff;
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 21px; margin: 48px 0 8px; padding-top: 16px; border-top: 3px solid var(--fg); }
h3 { font-size: 16px; margin: 28px 0 8px; }
p.lead, p.muted, figcaption, .note { color: var(--muted); }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
table.meta th { width: 140px; }
table.results { font-size: 12px; }
table.results th, table.results td { padding: 2px 6px; }
table.results td.num, table.numbers td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
table.results tr:nth-child(even) td { background: #fbfcfd; }
td.better { color: #1a7f37; font-weight: 600; }
td.worse { color: #b42318; font-weight: 600; }
.scroll { overflow-x: auto; max-width: 100%; }
pre { margin: 0; white-space: pre-wrap; word-break: break-word; font-size: 12px; }
details summary { cursor: pointer; color: var(--muted); }
figure { margin: 16px 0 24px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { margin-top: 4px; font-size: 13px; }
.badge { display: inline-block; min-width: 104px; padding: 1px 8px; border-radius: 10px; color: #fff;
  font-size: 12px; font-weight: 600; text-align: center; white-space: nowrap; }
.badge.supported { background: #1a7f37; }
.badge.not-supported { background: #b42318; }
.badge.inconclusive { background: #8a6d00; }
.finding { border: 1px solid var(--line); border-left: 6px solid var(--line); border-radius: 4px;
  padding: 8px 14px; margin: 12px 0; }
.finding.supported { border-left-color: #1a7f37; }
.finding.not-supported { border-left-color: #b42318; }
.finding.inconclusive { border-left-color: #8a6d00; }
.finding h4 { display: flex; gap: 10px; align-items: baseline; margin: 2px 0 6px; font-size: 14px; }
.finding h4 .badge { flex: none; }
.finding .test { margin: 4px 0; }
.finding table { margin: 6px 0; }
"""


class _Html(str):
    """Markup already escaped (or built from escaped parts): :func:`_table` passes it through."""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _missing(x) -> bool:
    return x is None or isinstance(x, float | np.floating) and math.isnan(x) or x is pd.NA


def _num(x) -> str:
    """A figure for a table: '–' when missing, an integer as is, else 3 decimals (1 from 100 up); a value below 1 in
    size is never shown as ±1.000 (0.9995 stays 0.9995), and −0.000 is 0.000."""
    if _missing(x):
        return "–"
    if isinstance(x, bool | np.bool_) or not isinstance(x, int | float | np.number):
        return str(x)
    if isinstance(x, int | np.integer):
        return str(int(x))
    digits = 1 if abs(x) >= 100 else 3
    while abs(x) < 1 and abs(float(f"{x:.{digits}f}")) >= 1 and digits < 12:
        digits += 1
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _interval(value, low=None, high=None) -> str:
    """``value [low, high]``, or the value alone without bounds."""
    return _num(value) + ("" if low is None and high is None else f" [{_num(low)}, {_num(high)}]")


def _table(header: Sequence[str] | None, rows: Sequence[Sequence], cls: str = "") -> str:
    """An HTML table (no head row when ``header`` is None). A cell is text (escaped), :class:`_Html`, or
    ``(cell, css_class)``."""
    def td(cell) -> str:
        cell, css = cell if isinstance(cell, tuple) else (cell, "")
        return (f'<td class="{_e(css)}">' if css else "<td>") + (cell if isinstance(cell, _Html) else _e(cell)) + \
            "</td>"
    head = "" if header is None else "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead>"
    body = "".join("<tr>" + "".join(td(c) for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table class="{_e(cls)}">{head}<tbody>{body}</tbody></table></div>'


def _value(value) -> str | _Html:
    """A meta value: text, or pretty JSON (a dict or a list) folded in a ``<details>``."""
    if isinstance(value, dict | list | tuple):
        text = json.dumps(value, indent=2, sort_keys=True, default=str)
        return _Html(f"<details><summary>{len(value)} entries</summary><pre>{_e(text)}</pre></details>")
    return str(value)


def _figure(caption: str, path: Path) -> str:
    """A ``<figure>`` with the PNG at ``path`` embedded as a base64 data URI."""
    data = Path(path).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path} is not a PNG: the report embeds PNG figures only")
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<figure><img src="{uri}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'


def _badge(verdict: str, label: str | None = None) -> _Html:
    """The verdict's coloured badge, reading ``label`` (default the verdict)."""
    return _Html(f'<span class="badge {BADGE.get(verdict, "inconclusive")}">{_e(label or verdict)}</span>')


def _header(ev: ModelEvidence, meta: dict) -> str:
    """The model's provenance: ``meta``'s run-wide keys; a dict ``meta["models"]``'s entry for this model over them;
    its ``meta["data_hashes"][model]`` as the data hash; else the results' own data hashes."""
    models, hashes = meta.get("models"), meta.get("data_hashes")
    fields = {k: v for k, v in meta.items()
              if k not in ("title", "agreement") and not (k == "models" and isinstance(v, dict))}
    fields |= models.get(ev.model, {}) if isinstance(models, dict) else {}
    fields["model"] = ev.model
    if "data_hash" not in fields and isinstance(hashes, dict) and ev.model in hashes:
        fields["data_hash"] = hashes[ev.model]
    if "data_hash" not in fields and "data_hash" in ev.results:
        fields["evaluation_data_hash"] = ", ".join(sorted(ev.results["data_hash"].dropna().astype(str).unique()))
    fields.setdefault("date", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    fields |= {"layers": ev.n_layers, "chosen layer": ev.layer, "position": ev.position,
               "landing layer": ev.landing_layer}
    order = [k for k in HEADER_KEYS if k in fields] + [k for k in fields if k not in HEADER_KEYS]
    return _table(None, [[k.replace("_", " "), _value(fields[k])] for k in order], "meta")


def _gate(ev: ModelEvidence) -> str:
    """The conditions that break the model, each with the rows past their bounds."""
    gone = broken(ev.results)
    if not gone:
        return '<p class="muted">No condition breaks the model.</p>'
    return ('<p class="note">These conditions break the model: they are never ranked best, and their suppression '
            'counts for no finding.</p>' + _table(["condition", "why"], [[n, why] for n, why in gone.items()]))


def _results(ev: ModelEvidence) -> str:
    """Non-control, non-baseline rows (the baseline is each row's baseline column); Δ coloured where its 95 %
    interval excludes 0 (green: better for the row's goal); the last column marks a condition that breaks the
    model."""
    r, gone = ev.results, broken(ev.results)
    if r.empty:
        return '<p class="muted">No result rows.</p>'
    r = _non_control(r)
    r = r[r["intervention"] != "baseline"]
    order = {m: i for i, m in enumerate(METRIC_ORDER)}
    r = r.assign(_order=r["metric"].map(lambda m: order.get(m, len(order))))
    r = r.sort_values([c for c in ("_order", "metric", "dataset", "judge", "max_new_tokens", "family", "intervention")
                       if c in r])
    rows = []
    for row in r.to_dict("records"):
        low, high = row.get("delta_ci_low"), row.get("delta_ci_high")
        css = "better" if low is not None and low > 0 else ("worse" if high is not None and high < 0 else "")
        specific = row.get("specific")
        rows.append([row["intervention"], row.get("family", "–"), row["metric"], row.get("judge") or "–",
                     row["dataset"], _num(row.get("max_new_tokens") or None), _num(row.get("n")),
                     (_interval(row["value"], row.get("ci_low"), row.get("ci_high")), "num"),
                     (_num(row.get("baseline")), "num"), (_interval(row.get("delta"), low, high), f"num {css}"),
                     "–" if _missing(specific) else ("yes" if specific else "no"),
                     (BROKEN_LABEL, "worse") if row["intervention"] in gone else "ok"])
    return _table(["intervention", "family", "metric", "judge", "dataset", "tokens", "n", "value [95 % CI]",
                   "baseline", "Δ [95 % CI]", "specific", "coherence gate"], rows, "results")


def _non_control(results: pd.DataFrame) -> pd.DataFrame:
    """The result rows that are not random controls."""
    return results[~results["control"].fillna(False).astype(bool)] if "control" in results else results


def _by_judge(ev: ModelEvidence) -> str:
    """Per non-control condition (rows, baseline first), the rates on harmful requests at the longest length under
    every judge (columns): refusal per judge, then the unsafe rate (llm-judged compliance or a guard), so the
    substring rate stands beside the llm judge's; '–' where a judge did not grade a condition."""
    r = ev.results
    if r.empty or "judge" not in r:
        return ""
    r = _non_control(r)
    r = r[r["metric"].isin(["refusal", "unsafe"]) & (r["dataset"] == "harmful")]
    if r.empty:
        return ""
    r = r[r["max_new_tokens"] == r["max_new_tokens"].max()]
    r = r.assign(column=[f"{m.replace('refusal', 'refused')}: {j}" for m, j in zip(r["metric"], r["judge"])])
    columns = sorted(set(r["column"]), key=lambda c: (c.startswith("unsafe"), c))
    cells = {(row["intervention"], row["column"]): (_interval(row["value"], row.get("ci_low"), row.get("ci_high")),
                                                    "num") for row in r.to_dict("records")}
    names = sorted(set(r["intervention"]), key=lambda n: (n != "baseline", n))
    gone = broken(ev.results)
    rows = [[f"{n} ({BROKEN_LABEL})" if n in gone else n, *(cells.get((n, c), "–") for c in columns)] for n in names]
    return (f"<h3>Harmful requests by judge ({_num(int(r['max_new_tokens'].max()))} tokens)</h3>"
            + _table(["intervention", *columns], rows, "results"))


def _analysis_tables(ev: ModelEvidence) -> list[str]:
    """The geometry, landing and sensitivity tables (those with rows), numbers as in every table; a landing row of a
    condition that breaks the model says so beside its name."""
    landing, gone = ev.landing.drop(columns=["kind"], errors="ignore"), broken(ev.results)
    if "intervention" in landing:
        landing = landing.assign(intervention=[f"{n} ({BROKEN_LABEL})" if n in gone else n
                                               for n in landing["intervention"]])
    tables = (("Where harmful activations land (fraction of the way from the harmful to the harmless centroid; "
               f"layer {ev.landing_layer})", landing),
              ("Residual geometry per layer", ev.geometry),
              ("DiM sensitivity per layer (cosine)", ev.sensitivity))
    parts = []
    for title, frame in tables:
        if len(frame):
            rows = [[(_num(v), "num") if isinstance(v, float | int) and not isinstance(v, bool) else str(v)
                     for v in row] for row in frame.itertuples(index=False)]
            parts += [f"<h3>{_e(title)}</h3>", _table([c.replace("_", " ") for c in frame.columns], rows, "results")]
    return parts


def _finding(f: Finding) -> str:
    """One finding: badge and title, the rule, its numbers (``[value, low, high]`` as ``value [low, high]``), note."""
    css = BADGE.get(f.verdict, "inconclusive")
    numbers = [[name, (_interval(*v) if isinstance(v, list | tuple) and len(v) == 3 else _num(v), "num")]
               for name, v in f.numbers.items()]
    power = "" if f.n is None else (
        f'<p class="power"><b>Power.</b> {_e(f.measure)}; n = {f.n} items per compared row; the smallest paired '
        f"difference detectable there (5 % test, 80 % power) is about ±{f.detectable:.2f}.</p>")
    return (f'<div class="finding {css}"><h4>{_badge(f.verdict, f.label)}<span>{f.id}. {_e(f.title)}</span></h4>'
            f'<p class="test"><b>Test.</b> {_e(f.test)}</p>' + power
            + (_table(["figure", "value [95 % CI]"], numbers, "numbers") if numbers else "")
            + (f'<p class="note">{_e(f.note)}</p>' if f.note else "") + "</div>")


def _summary(evidences: Sequence[ModelEvidence], findings: dict[str, list[Finding]]) -> str:
    """Finding × model: the verdict badges."""
    verdicts = {ev.model: {f.id: f for f in findings.get(ev.model, [])} for ev in evidences}
    rows = [[f"{i}. {title}"] + [_badge(verdicts[m][i].verdict, verdicts[m][i].label) if i in verdicts[m] else "–"
                                 for m in verdicts]
            for i, title in TITLES.items()]
    return _table(["finding", *verdicts], rows, "summary")


def _uncertainty(evidences: Sequence[ModelEvidence]) -> str:
    """How uncertain a rate is at the fewest prompts per side, per measure: the 95 % half-width at p = ½, ≈ 1/√n."""
    said = []
    for metric, what in (("first_token_refusal", "first-token rate"), ("refusal", "judged rate of a response")):
        sizes = [int(n) for ev in evidences if "n" in ev.results
                 for n in ev.results.loc[ev.results["metric"] == metric, "n"].dropna()]
        if sizes:
            n = min(sizes)
            said.append(f"a {what} on {n} prompts per side is uncertain by up to about ±{1.96 * 0.5 / n ** 0.5:.2f}")
    return (said[0][0].upper() + "; ".join(said)[1:] + ".") if said else ""


def _judges(evidences: Sequence[ModelEvidence], agreement: Sequence[dict]) -> list[str]:
    """The judges' recorded agreement with human labels (``meta["agreement"]``, from
    :func:`~refusal_lab.evaluation.agreement.recorded_agreement`) and which rule produced each model's unsafe rate."""
    parts = ["<h3>Judges</h3>"]
    if agreement:
        rows = [[a["judge"], a["labels"], (str(a["n"]), "num"), a["figure"], a["command"]] for a in agreement]
        parts.append(_table(["judge and rule", "human labels", "n", "accuracy / Cohen's κ / confusion", "command"],
                            rows, "results"))
    else:
        parts.append("<p>No recorded agreement with human labels (benchmarks/judge_agreement.py --record).</p>")
    for ev in evidences:
        r = ev.results
        judges = sorted(set(r.loc[r["metric"] == "unsafe", "judge"].dropna())) if "metric" in r else []
        said = "; ".join(unsafe_rule(j) for j in judges) or "not measured (no unsafe metric or no judge for it)"
        parts.append(f"<p><b>Unsafe rate ({_e(ev.model)}).</b> {_e(said)}.</p>")
    return parts


def render(evidences: Sequence[ModelEvidence], findings: dict[str, list[Finding]],
           figures: dict[str, list[tuple[str, Path]]], meta: dict) -> str:
    """The report page (see the module docstring)."""
    parts = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
             '<meta name="viewport" content="width=device-width, initial-scale=1">'
             f"<title>{_e(meta.get('title', 'refusal-lab report'))}</title><style>{CSS}</style></head><body>",
             f"<h1>{_e(meta.get('title', 'refusal-lab report'))}</h1>",
             f'<p class="lead">{len(evidences)} model(s). Intervals are 95 %: Wilson for a rate, a percentile '
             "bootstrap over items otherwise, paired on the same items for a difference (relative for perplexity). "
             "Δ is signed so that higher is better for what the row is for (bypass: less refusal; induce: more). "
             f"{_uncertainty(evidences)}</p>",
             f"<p><b>Coherence gate.</b> {_e(bounds_text())}</p>",
             "<h3>Findings at a glance</h3>", _summary(evidences, findings),
             *_judges(evidences, meta.get("agreement", []))]
    for ev in evidences:
        figs = figures.get(ev.model, [])
        parts += [f"<h2>{_e(ev.model)}</h2>", _header(ev, meta)]
        parts += [_figure(*figs[0])] if figs else []
        parts += ["<h3>Conditions that break the model</h3>", _gate(ev), _by_judge(ev), "<h3>Results</h3>",
                  _results(ev)]
        parts += ["<h3>Figures</h3>"] + [_figure(*fig) for fig in figs[1:]] if len(figs) > 1 else []
        parts += _analysis_tables(ev)
        parts += ["<h3>Findings</h3>"] + [_finding(f) for f in findings.get(ev.model, [])]
    return "\n".join(parts) + "\n</body></html>\n"


def write_report(run_dir: Path, evidences: list[ModelEvidence], findings: dict[str, list[Finding]],
                 figures: dict[str, list[tuple[str, Path]]], meta: dict) -> Path:
    """Write ``run_dir/report.html`` and ``run_dir/findings.json``; return the report's path. ``findings`` and
    ``figures`` are keyed by :attr:`ModelEvidence.model` (every model, no other: a mismatch raises ValueError);
    ``figures[model]`` lists ``(caption, png_path)``, the Δ-vs-baseline figure first (may be empty). ``meta``: run-wide
    keys (``config``, ``code_version``, ``date``, ``data_hash``, anything else), optionally ``data_hashes`` and a
    dict ``models`` keyed by model name (see :func:`_header`)."""
    names = [ev.model for ev in evidences]
    for what, given in (("findings", findings), ("figures", figures)):
        if sorted(given) != sorted(names):
            raise ValueError(f"{what} must be keyed by ModelEvidence.model, one entry per model ({names}); got "
                             f"{sorted(given)}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = findings_json(evidences, findings)
    (run_dir / "findings.json").write_text(json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
    target = run_dir / "report.html"
    target.write_text(render(evidences, findings, figures, meta), encoding="utf-8")
    return target


__all__ = ["render", "write_report"]
