"""The report: one self-contained HTML file (data-URI PNG figures, no external reference, every text escaped) beside
findings.json, built from a realistic synthetic study of two models; and the same page rendered in real headless
Chromium (no console error, no request but the file and data: URIs, every image decoded)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from conftest import described

from refusal_lab.analysis.evidence import FAMILY, ModelEvidence
from refusal_lab.analysis.findings import assess, findings_json
from refusal_lab.analysis.report import render, write_report
from refusal_lab.evaluation.stats import difference, estimate, signed_delta

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

N_PROMPTS, N_DOCS, LENGTH = 60, 40, 24
# name → (refusal rate on harmful, on harmless, NLL per token, repeated-3-gram fraction)
CONDITIONS = {
    "baseline": (0.75, 0.03, 2.00, 0.05),
    "ablate[layer]": (0.05, 0.02, 2.02, 0.06),
    "ablate[all]": (0.03, 0.02, 2.04, 0.06),
    "actadd[layer,scale=-1]": (0.10, 0.02, 2.10, 0.08),
    "actadd[layer,scale=1]": (0.95, 0.90, 2.12, 0.07),
    "classifier-actadd[layer,scale=-1]": (0.12, 0.02, 2.11, 0.08),
    "classifier-actadd[layer,scale=1]": (0.93, 0.85, 2.13, 0.07),
    "nullspace[layer]": (0.35, 0.02, 2.03, 0.06),
    "nullspace[layer,centered]": (0.30, 0.02, 2.05, 0.06),
    "flip[layer,alpha=2,flip_variant=input]": (0.04, 0.05, 2.60, 0.18),  # overcorrects: ppl ×1.8, +0.13 3-grams
    "flip[layer,alpha=2,flip_variant=writes]": (0.08, 0.07, 2.90, 0.40),  # breaks the model: ppl ×2.5
    **{f"rank-k[layer,k={k},order=iteration]": (r, 0.02, 2.0 + 0.01 * k, 0.05)
       for k, r in ((1, 0.45), (2, 0.38), (3, 0.36), (4, 0.35))},
    "leace[layer]": (0.40, 0.02, 2.01, 0.05),
    "subspace[all,k=3]": (0.01, 0.03, 2.08, 0.07),
    "ablate[layer]~random0": (0.74, 0.03, 2.00, 0.05),
    "nullspace[layer]~random0": (0.73, 0.03, 2.00, 0.05),
}


def _items(rng: np.random.Generator) -> pd.DataFrame:
    """Per-item values with a latent per item shared by every condition (so pairs correlate, as real ones do)."""
    u = {side: rng.random(N_PROMPTS) for side in ("harmful", "harmless")}
    tokens = {name: rng.integers(20, 60, N_DOCS).astype(float) for name in ("wikitext", "instructions")}
    doc_noise, rep_noise = rng.normal(0, 0.05, N_DOCS), rng.normal(0, 0.02, 2 * N_PROMPTS)
    rows = []
    for name, (harmful, harmless, nll, rep) in CONDITIONS.items():
        for metric, side, rate in (("refusal", "harmful", harmful), ("harmless_refusal", "harmless", harmless)):
            rows += [(name, metric, "substring", side, LENGTH, f"{side}:{i}", float(v < rate), np.nan)
                     for i, v in enumerate(u[side])]
        for dataset, t in tokens.items():
            own = rng.normal(0, 0.03, N_DOCS)
            rows += [(name, "perplexity", "", dataset, 0, f"{dataset}:{i}", (nll + doc_noise[i] + own[i]) * t[i],
                      t[i]) for i in range(N_DOCS)]
        rows += [(name, "repetition", "3-gram", "both", LENGTH, f"both:{i}", float(np.clip(rep + e, 0, 1)), np.nan)
                 for i, e in enumerate(rep_noise)]
    return pd.DataFrame(rows, columns=["intervention", "metric", "judge", "dataset", "max_new_tokens", "item",
                                       "value", "tokens"])


def _results(model: str, items: pd.DataFrame) -> pd.DataFrame:
    """Result rows as the suite aggregates them (value, baseline, paired difference, Δ, vs the random control)."""
    rows, keys = [], ["metric", "judge", "dataset", "max_new_tokens"]
    for key, unit in items.groupby(keys):
        by_name = {name: g.sort_values("item") for name, g in unit.groupby("intervention")}
        base = by_name["baseline"]
        for name, g in by_name.items():
            kind, control = name.split("[")[0], "~" in name  # the fixture names; the rows carry described(name)
            goal = "induce" if "scale=1" in name else "bypass"
            tokens = g["tokens"].to_numpy() if key[0] == "perplexity" else None
            base_tokens = base["tokens"].to_numpy() if tokens is not None else None
            value = estimate(key[0], g["value"].to_numpy(), tokens)
            b = estimate(key[0], base["value"].to_numpy(), base_tokens)
            diff = difference(key[0], g["value"].to_numpy(), base["value"].to_numpy(), tokens, base_tokens)
            delta = signed_delta(key[0], goal, diff)
            row = dict(zip(keys, key)) | {
                "model": model, **described(name), "goal": goal, "control_for": name.split("~")[0] if control else None,
                "family": FAMILY.get(kind, "baseline"), "data_hash": "3f2a9c1e77d0b4a5", "n": value.n,
                "value": value.value, "ci_low": value.low, "ci_high": value.high, "baseline": b.value,
                "difference": diff.value, "difference_ci_low": diff.low, "difference_ci_high": diff.high,
                "delta": delta.value, "delta_ci_low": delta.low, "delta_ci_high": delta.high, "specific": None}
            if (c := by_name.get(f"{name}~random0")) is not None:
                vs = difference(key[0], g["value"].to_numpy(), c["value"].to_numpy(), tokens,
                                c["tokens"].to_numpy() if tokens is not None else None)
                row["specific"] = bool(vs.low > 0 or vs.high < 0)
            rows.append(row)
    return pd.DataFrame(rows)


def synthetic_evidence(model: str, seed: int = 0, n_layers: int = 12) -> ModelEvidence:
    """A study of one model; ``seed`` 1 also lands the nullspace near the harmful cluster (finding 5 not supported)
    and lacks the matched-vs-unmatched cosine (finding 7 inconclusive)."""
    rng = np.random.default_rng(seed)
    items = _items(rng)
    layers = np.arange(n_layers)
    heat = np.exp(-np.abs(layers[:, None] - layers[None, :]) / 4.0)
    landing = pd.DataFrame([
        described(n) | dict(family="INLP", fraction=f, fraction_ci_low=f - 0.08,
             fraction_ci_high=f + 0.08, nearer_harmless=near, silhouette=0.2)
        for n, f, near in (("nullspace[layer]", 0.1 if seed == 1 else 0.52, 0.3), ("ablate[layer]", 0.6, 0.4),
                           ("flip[layer,alpha=2,flip_variant=input]", 1.05, 0.92))])
    return ModelEvidence(
        model, n_layers, layer=5, position=-1, landing_layer=6, results=_results(model, items), items=items,
        heatmaps={"dim": heat, "inlp": heat ** 2},
        inlp_dim_cosine=pd.DataFrame({"layer": layers, "cosine": 0.5 + 0.4 * np.exp(-np.abs(layers - 5) / 3)}),
        landing=landing,
        sensitivity=pd.DataFrame({"layer": layers, "batched_vs_single": 0.9995,
                                  "matched_vs_unmatched": np.nan if seed == 1 else 0.93}))


def synthetic_figures(ev: ModelEvidence, directory: Path, caption_prefix: str = "") -> list[tuple[str, Path]]:
    """Three small PNGs drawn with matplotlib: Δ vs baseline (refusal on harmful), the DiM heatmap, landing."""
    directory.mkdir(parents=True, exist_ok=True)
    r = ev.results
    r = r[(r["metric"] == "refusal") & ~r["control"] & (r["intervention"] != "baseline")].sort_values("delta")
    out = []

    def save(fig, name: str, caption: str) -> None:
        path = directory / f"{ev.model}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)
        out.append((caption_prefix + caption, path))

    fig, ax = plt.subplots(figsize=(8, 4.5))
    err = np.vstack([r["delta"] - r["delta_ci_low"], r["delta_ci_high"] - r["delta"]])
    ax.barh(r["intervention"], r["delta"], xerr=err, color="#4c72b0")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("Δ refusal vs baseline (higher = better for the row's goal)")
    save(fig, "delta", "Δ vs baseline, refusal on held-out harmful prompts (substring judge, 24 tokens), 95 % CI")
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(ev.heatmaps["dim"], vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_title("DiM cosine across layers")
    save(fig, "heatmap", "Cosine between per-layer DiM directions")
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(ev.landing["intervention"].str.slice(0, 18), ev.landing["fraction"], color="#dd8452")
    ax.set_ylabel("landing fraction")
    save(fig, "landing", f"Where harmful activations land at layer {ev.landing_layer}")
    return out


def build_report(directory: Path, hostile: bool = False) -> tuple[Path, list, dict]:
    """Two synthetic models' report in ``directory``; ``hostile`` puts markup in a model name, caption and meta."""
    names = ["qwen2.5-coder-0.5b-instruct", "m<b>&" if hostile else "qwen2.5-coder-1.5b-instruct"]
    evidences = [synthetic_evidence(name, seed) for seed, name in enumerate(names)]
    prefix = "<script>alert(1)</script> " if hostile else ""
    figures = {ev.model: synthetic_figures(ev, directory / "figures" / str(i), prefix)
               for i, ev in enumerate(evidences)}
    findings = {ev.model: assess(ev) for ev in evidences}
    meta = {"config": {"compare": {"kinds": ["ablate", "nullspace"], "n_eval": 60}, "note": "<i>x</i>"},
            "code_version": "f397dc4", "date": "2025-01-01T00:00:00+00:00", "models": names,
            "data_hashes": {names[0]: "3f2a9c1e77d0b4a5", names[1]: "9b0c4d2e11aa5f60"}}
    return write_report(directory, evidences, findings, figures, meta), evidences, findings


def test_report_is_self_contained_and_escaped(tmp_path):
    report, evidences, findings = build_report(tmp_path / "run", hostile=True)
    assert report == tmp_path / "run" / "report.html"
    page = report.read_text(encoding="utf-8")
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 6 and all(s.startswith("data:image/png;base64,") for s in sources)
    for forbidden in ("http://", "https://", 'src="/', "<link", "<script", "url(", "@import", "<iframe"):
        assert forbidden not in page.lower(), forbidden
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "m&lt;b&gt;&amp;" in page
    assert "&lt;i&gt;x&lt;/i&gt;" in page  # meta text too
    assert page.index("Δ vs baseline, refusal") < page.index("<h3>Results</h3>")  # the Δ figure comes first
    assert "~random0" not in page  # controls stay out of the results table
    results = evidences[0].results
    n = int(results.loc[results["metric"] == "refusal", "n"].min())  # the 95 % Wilson half-width at p = ½ ≈ 0.98/√n
    assert f"A judged rate of a response on {n} prompts per side is uncertain by up to about ±{0.98 / n ** 0.5:.2f}." \
        in page
    assert "f397dc4" in page and "3f2a9c1e77d0b4a5" in page and "9b0c4d2e11aa5f60" in page
    for label in {f.label for fs in findings.values() for f in fs}:  # e.g. "inconclusive (underpowered: n = 30)"
        assert f">{label}</span>" in page
    for f in findings[evidences[0].model]:
        if f.n is not None:
            assert f"n = {f.n} items per compared row" in page and f"±{f.detectable:.2f}" in page
    data = json.loads((tmp_path / "run" / "findings.json").read_text(encoding="utf-8"))
    assert data == json.loads(json.dumps(findings_json(evidences, findings)))
    assert [f["verdict"] for f in data["models"][evidences[0].model]["findings"]] == \
        [f.verdict for f in findings[evidences[0].model]]


def test_realistic_findings():
    """End to end on suite-shaped tables: 6 is inconclusive because the subspace (0.01) and the best ablation
    (0.03) both sit at the floor, so their paired difference's interval reaches 0."""
    verdicts = [[f.verdict for f in assess(synthetic_evidence("m", seed))] for seed in (0, 1)]
    assert verdicts[0] == ["supported"] * 5 + ["inconclusive", "supported"]
    assert verdicts[1] == ["supported"] * 4 + ["not supported", "inconclusive", "inconclusive"]
    found = assess(synthetic_evidence("m"))
    assert found[3].numbers["smallest k shown (layer, iteration)"] == 2
    assert found[3].numbers["INLP rank (layer, iteration)"] == 4


def test_bad_figures_and_keys_raise(tmp_path):
    ev = synthetic_evidence("m")
    bad = tmp_path / "figure.png"
    bad.write_bytes(b"GIF89a not a png")
    with pytest.raises(ValueError, match="not a PNG"):
        write_report(tmp_path, [ev], {"m": assess(ev)}, {"m": [("figure", bad)]}, {})
    with pytest.raises(ValueError, match="keyed by ModelEvidence.model"):  # e.g. keyed by a model path instead
        write_report(tmp_path, [ev], {"/models/m": assess(ev)}, {"m": []}, {})
    report = write_report(tmp_path, [ev], {"m": assess(ev)}, {"m": []}, {"models": {"m": {"data_hash": "abc"}}})
    assert "abc" in report.read_text(encoding="utf-8")  # a per-model meta entry; no figure at all is fine


def render_in_chromium(report: Path, screenshot: Path, executable: str) -> dict:
    """Load ``report`` in headless Chromium; record console errors, requested URLs and image sizes; screenshot."""
    from playwright.sync_api import sync_playwright

    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(report.resolve().as_uri(), wait_until="load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return {"errors": errors, "requests": requests, "images": images, "overflow": overflow}


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no chromium executable on PATH (Debian: apt install chromium)")
    report, _, _ = build_report(tmp_path / "run", hostile=True)
    seen = render_in_chromium(report, tmp_path / "report.png", executable)
    assert seen["errors"] == []
    assert seen["requests"] and all(u == report.resolve().as_uri() or u.startswith("data:")
                                    for u in seen["requests"]), seen["requests"]
    assert len(seen["images"]) == 6 and all(complete and width > 0 for complete, width in seen["images"])
    assert seen["overflow"] <= 0  # nothing wider than the window
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_harmful_rates_by_judge_stand_side_by_side(tmp_path):
    """The by-judge table: per condition the substring refusal rate beside an llm judge's and its unsafe rate, the
    values and Wilson intervals of the result rows, '–' where the llm judge did not grade, broken rows labelled."""
    ev = synthetic_evidence("m")
    r = ev.results
    sub = r[(r["metric"] == "refusal") & (r["judge"] == "substring")]
    llm = sub.set_index("intervention").loc[["baseline", "ablate[all]"]].reset_index().assign(
        judge="llm:judge-ablated", value=[0.5, 0.25], ci_low=[0.3, 0.1], ci_high=[0.7, 0.45])
    unsafe = llm.assign(metric="unsafe", judge="llm:judge-ablated compliance", value=[0.0, 0.625],
                        ci_low=[0.0, 0.4], ci_high=[0.1, 0.8])
    ev.results = pd.concat([r, llm, unsafe], ignore_index=True)
    page = render([ev], {"m": assess(ev)}, {"m": []}, {})
    table = page[page.index("<h3>Harmful requests by judge (24 tokens)</h3>"):]
    table = table[: table.index("</table>")]
    header = re.findall(r"<th>([^<]*)</th>", table)
    assert header == ["intervention", "refused: llm:judge-ablated", "refused: substring",
                      "unsafe: llm:judge-ablated compliance"]
    rows = {cells[0]: cells[1:] for cells in
            (re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in table.split("<tr>")[2:])}
    assert list(rows)[0] == "baseline" and len(rows) == len(set(sub.loc[~sub["control"], "intervention"]))
    base = sub.set_index("intervention").loc["baseline"]
    assert rows["baseline"] == ["0.500 [0.300, 0.700]",
                                f"{base['value']:.3f} [{base['ci_low']:.3f}, {base['ci_high']:.3f}]",
                                "0.000 [0.000, 0.100]"]
    assert rows["ablate[all]"][0] == "0.250 [0.100, 0.450]" and rows["ablate[all]"][2] == "0.625 [0.400, 0.800]"
    assert rows["leace[layer]"][0] == "–" and rows["leace[layer]"][2] == "–"
    assert "flip[layer,alpha=2,flip_variant=writes] (breaks the model)" in rows
