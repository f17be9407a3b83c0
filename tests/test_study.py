"""The study (`refusal-lab study --config FILE --out DIR`) as users run it: the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ARCHITECTURES

from refusal_lab.models.adapters import SUPPORTED_MODEL_TYPES
from refusal_lab.pipeline.recheck import differences
from refusal_lab.pipeline.study import load_study_config, model_slug

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("refusal-lab")
LOOSE = {"kl_threshold": 1e9, "induce_threshold": -1e9, "min_inlp_accuracy": 0.0}
KINDS = ["ablate", "actadd", "nullspace", "flip", "rank-k", "leace", "subspace", "classifier-actadd"]


def _cli(*args, env=None, timeout=1200, cwd=None):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, env=environment,
                          timeout=timeout, cwd=cwd)


def _study_toml(path: Path, model: Path) -> Path:
    path.write_text(f"""
models = ["{model}"]
n_train = 16
n_val = 8
batch_size = 16
dtype = "float32"
extract_methods = ["dim", "inlp", "flip", "classifier", "leace", "subspace"]
[selection]
scopes = ["all"]
candidates = "dim"
finalists = 4
kl_threshold = 1e9
induce_threshold = -1e9
min_inlp_accuracy = 0.0
[methods]
inlp_max_iterations = 3
subspace_k = 3
[compare]
kinds = {json.dumps(KINDS)}
scopes = ["all"]
rank_k_orders = ["iteration"]
sweep_scopes = ["all"]
sweep_max_k = 2
sweep_controls = false
subspace_ks = [1, 3]
control_seeds = 1
[evaluate]
interventions = ["*"]
metrics = ["refusal", "harmless_refusal", "first_token_refusal", "first_token_harmless_refusal", "kl", "perplexity",
           "arc", "repetition"]
judges = ["substring", "markers"]
lengths = [4]
n_eval = 3
n_generate = 2
arc_n = 2
text_docs = 1
text_sets = ["lambada"]
batch_size = 8
[analysis]
n_geometry = 4
n_sensitivity = 4
""")
    return path


@pytest.fixture(scope="module")
def study(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    config = _study_toml(root / "study.toml", model_dir)
    env = {"REFUSAL_LAB_CACHE": str(root / "cache")}
    result = _cli("study", "--config", config, "--out", root / "out", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, config, env, result


@pytest.mark.slow
def test_study_runs_every_kind_and_writes_the_report(study, model_dir):
    root, _, _, result = study
    out = root / "out"
    model = out / model_slug(str(model_dir))
    results = pd.read_parquet(model / "evaluation" / "results.parquet")
    names = set(results["intervention"])
    for kind in KINDS:
        assert any(n.startswith(f"{kind}[") for n in names), (kind, names)
    assert {"subspace[all,k=1]", "flip[all,alpha=2,flip_variant=input]", "flip[all,alpha=2,flip_variant=writes]",
            "rank-k[all,k=2,order=iteration]"} <= names
    assert "nullspace[all,centered]" in names  # [compare] defaults: the centred variants too
    assert "subspace[all,k=2]" in names  # the whole stack's rows (2 layers below 0.8·L of 3), k = 3 capped at 2
    assert any("~random0" in n for n in names)  # the controls ran
    assert set(results["judge"].dropna()) >= {"substring", "markers"}
    assert set(results.loc[results["metric"] == "perplexity", "dataset"]) == {"lambada", "instructions"}
    items = pd.read_parquet(model / "evaluation" / "items.parquet")
    assert set(items["intervention"]) == names
    # a row's value is the statistic of its items (a rate: their mean)
    row = results[(results["intervention"] == "ablate[all]") & (results["metric"] == "refusal")
                  & (results["judge"] == "substring")].iloc[0]
    mine = items[(items["intervention"] == "ablate[all]") & (items["metric"] == "refusal")
                 & (items["judge"] == "substring")]
    assert row["value"] == pytest.approx(mine["value"].mean())
    # candidates = "dim": every other method was selected only at the cell DiM chose
    dim = pd.read_csv(model / "methods" / "dim" / "selection-all.csv")
    cell = tuple(dim.loc[dim["status"] == "selected", ["layer", "position"]].iloc[0])
    assert dim[["layer", "position"]].drop_duplicates().shape[0] > 1
    for method in ("inlp", "flip", "classifier", "leace"):
        table = pd.read_csv(model / "methods" / method / "selection-all.csv")
        assert {tuple(r) for r in table[["layer", "position"]].itertuples(index=False)} == {cell}, method
    assert len(list((model / "methods" / "leace" / "candidates").glob("*.json"))) == 1  # fitted at that cell only
    assert len(list((model / "methods" / "inlp" / "candidates").glob("*.json"))) > 1  # INLP everywhere (heatmap)
    landing = pd.read_csv(model / "analysis" / "landing.csv")
    assert "nullspace[all]" in set(landing["intervention"]) and landing["fraction"].notna().all()
    geometry = pd.read_csv(model / "analysis" / "geometry.csv")
    assert len(geometry) == 3 and geometry["probe_accuracy"].between(0, 1).all()
    assert (out / "report.html").stat().st_size > 10_000
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    assert "Residual geometry per layer" in html and "nullspace[all]" in html
    findings = json.loads((out / "findings.json").read_text())
    assert "findings" in result.stdout and "report:" in result.stdout
    assert "study" in result.stderr and "100%" in result.stderr and "eta" in result.stderr  # the overall bar
    verdicts = [f["verdict"] for m in findings["models"].values() for f in m["findings"]]
    assert len(verdicts) == 7 and set(verdicts) <= {"supported", "not supported", "inconclusive"}
    assert {p.name for p in (out / "figures").rglob("*.png")} >= {"delta.png", "heatmap-dim.png", "heatmap-inlp.png",
                                                                   "landing.png", "landing-pca.png", "rank-k.png",
                                                                   "geometry.png", "sensitivity.png"}
    pngs = list((out / "figures").rglob("*.png"))
    assert len(pngs) >= 5 and all(p.stat().st_size > 5_000 for p in pngs)


@pytest.mark.slow
def test_study_rerun_resumes_without_recomputing(study):
    root, config, env, _ = study
    out = root / "out"
    analysis = list(out.rglob("analysis/*"))  # the analysis is read back, not redone
    before = {p: p.stat().st_mtime_ns for p in analysis}
    assert len(before) >= 6
    started = time.perf_counter()
    result = _cli("study", "--config", config, "--out", out, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in analysis} == before
    assert time.perf_counter() - started < 120
    moved = root / "moved"  # a moved study resumes from elsewhere: its figures are found in its own directory
    shutil.copytree(out, moved)
    out.rename(root / "away")  # nothing left where the study was first run
    try:
        result = _cli("study", "--config", config, "--out", moved, env=env, cwd=moved)
    finally:
        (root / "away").rename(out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (moved / "report.html").read_text().count('src="data:image/png;base64,') == \
        (out / "report.html").read_text().count('src="data:image/png;base64,') > 0
    # another config in the same directory is refused, naming the fix
    other = config.with_name("other.toml")
    other.write_text(config.read_text().replace("n_eval = 3", "n_eval = 2"))
    result = _cli("study", "--config", other, "--out", out, env=env)
    assert result.returncode == 1
    assert f"{out} was created with config evaluate.n_eval = 3, not 2: use the same settings to resume" in result.stderr


def _rows(stdout: str) -> list[list[str]]:
    """The body rows of a rich table, as stripped cells."""
    return [[cell.strip() for cell in line.strip("│").split("│")] for line in stdout.splitlines()
            if line.startswith("│")]


def test_finding_differences_name_the_fields_with_numbers_within_tolerance():
    stored = {"id": 1, "verdict": "supported", "numbers": {"cosine": 0.9, "refusal": [0.5, 0.1, 0.9]}, "note": ""}
    assert differences(stored, stored | {"numbers": {"cosine": 0.9 + 1e-12, "refusal": [0.5, 0.1, 0.9]}}) == ()
    assert differences(stored, stored | {"verdict": "inconclusive", "numbers": {"cosine": 0.9}}) == ("verdict",
                                                                                                   "numbers")
    assert differences(stored, stored | {"numbers": {"cosine": 0.9, "refusal": [0.5, 0.1, 0.91]}}) == ("numbers",)
    assert differences(stored, stored | {"power": 0.8}) == ("power",)  # a field a finding gains is compared too
    assert differences(stored, None) == ("missing",) and differences(None, None) == ()


@pytest.mark.slow
def test_findings_recomputes_every_verdict_and_names_a_disagreement(study, tmp_path):
    root, _, env, _ = study
    out = root / "out"
    (model, entry), = json.loads((out / "findings.json").read_text())["models"].items()
    result = _cli("findings", "--run", out, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _rows(result.stdout) == [[model, str(f["id"]), f["verdict"], f["verdict"], "yes"]
                                    for f in entry["findings"]]
    assert f"all 7 findings agree with {out / 'findings.json'}" in result.stdout
    # another stored judge: its verdicts, not compared
    result = _cli("findings", "--run", out, "--judge", "markers", env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {row[-1] for row in _rows(result.stdout)} == {"not compared"} and "not compared" in result.stdout
    # one verdict changed in a copy: exit 1, one line naming it
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    stored = json.loads((tampered / "findings.json").read_text())
    changed = stored["models"][model]["findings"][2]
    changed["verdict"] = "inconclusive" if changed["verdict"] != "inconclusive" else "supported"
    (tampered / "findings.json").write_text(json.dumps(stored))
    result = _cli("findings", "--run", tampered, env=env, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: 1 of 7 findings disagree with {tampered / 'findings.json'}: {model} finding 3 (verdict)"]
    assert [model, "3", changed["verdict"], entry["findings"][2]["verdict"], "no: verdict"] in _rows(result.stdout)
    # not a finished study: one line naming the missing file and the fix
    missing = next(tampered.glob("*/analysis/landing.csv"))
    missing.unlink()
    result = _cli("findings", "--run", tampered, env=env, timeout=300)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: {tampered} is not a finished study (no {missing}); finish it with refusal-lab study --config "
        f"{tampered / 'study.json'} --out {tampered}"]
    result = _cli("findings", "--run", tmp_path, env=env, timeout=300)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: {tmp_path} is not a study directory (no study.json); refusal-lab study --config FILE --out "
        f"{tmp_path} makes one"]


@pytest.mark.slow
def test_study_from_scratch_reproduces_the_findings(study, tmp_path):
    """The same config and seed in a fresh directory with a fresh cache: the same verdicts and numbers."""
    root, config, _, _ = study
    result = _cli("study", "--config", config, "--out", tmp_path / "out", env={"REFUSAL_LAB_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (json.loads((d / "findings.json").read_text()) for d in (root / "out", tmp_path / "out"))
    assert first["thresholds"] == second["thresholds"] and first["models"].keys() == second["models"].keys()
    for model, entry in first["models"].items():
        again = second["models"][model]
        assert {k: v for k, v in entry.items() if k != "findings"} == {k: v for k, v in again.items()
                                                                       if k != "findings"}
        assert [f["id"] for f in entry["findings"]] == [f["id"] for f in again["findings"]]
        for old, new in zip(entry["findings"], again["findings"]):
            assert differences(old, new) == (), (model, old, new)


def _small_study(path: Path, model: Path, n_eval: int = 3) -> Path:
    """One model, DiM only, one intervention, one metric: the study's stages in seconds."""
    path.write_text(f"""
models = ["{model}"]
n_train = 8
n_val = 4
batch_size = 8
dtype = "float32"
device = "cpu"
extract_methods = ["dim"]
[selection]
scopes = ["all"]
finalists = 2
kl_threshold = 1e9
induce_threshold = -1e9
[compare]
kinds = ["ablate"]
scopes = ["all"]
sweep_max_k = 0
center_variants = false
control_seeds = 0
[evaluate]
metrics = ["refusal"]
judges = ["substring"]
lengths = [4]
n_eval = {n_eval}
[analysis]
n_geometry = 4
sensitivity = false
""")
    return path


def test_study_stages_rerun_when_interrupted_and_are_skipped_when_finished(model_dir, tmp_path, monkeypatch):
    """In process, with the stages counted: an analysis that dies after writing its files leaves no marker and is
    redone; finished stages are not; another config is refused, naming the setting."""
    from refusal_lab.core.errors import RefusalLabError
    from refusal_lab.pipeline import extraction, study
    from refusal_lab.pipeline.rundir import RunDirectory

    monkeypatch.setenv("REFUSAL_LAB_CACHE", str(tmp_path / "cache"))
    config = load_study_config(_small_study(tmp_path / "study.toml", model_dir))
    out = tmp_path / "out"
    model = out / model_slug(str(model_dir))
    calls: dict[str, int] = {}

    def counted(module, name, work):
        def run(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return work(*args, **kwargs)
        monkeypatch.setattr(module, name, run)

    real_analyse = study.analyse

    def dies_after_saving(*args):
        real_analyse(*args)  # every analysis file written
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "analyse", dies_after_saving)
    with pytest.raises(KeyboardInterrupt):
        study.run_study(config, out)
    rd = RunDirectory(model)
    assert rd.done("extract") and rd.done("evaluate") and not rd.done("analyse") and not rd.done("figures")
    assert (model / "analysis" / "evidence.json").exists()  # there, but the stage did not finish
    timings = json.loads((model / "manifest.json").read_text())["timings_s"]
    assert set(timings) == {"extract", "evaluate"} and timings["evaluate"] == rd.record("evaluate")["seconds"]

    for module, name, work in ((study, "_evaluate", study._evaluate), (study, "analyse", real_analyse),
                               (study, "draw_figures", study.draw_figures),
                               (extraction, "select_candidates", extraction.select_candidates)):
        counted(module, name, work)
    report, findings = study.run_study(config, out)
    assert calls == {"analyse": 1, "draw_figures": 1}  # extraction and evaluation had finished
    assert rd.done("analyse") and rd.done("figures") and report.exists()
    figures = rd.record("figures")["info"]["figures"]
    assert figures and all((out / "figures" / model.name / name).exists() for _, name in figures)
    stamps = {p: p.stat().st_mtime_ns for p in (model / "analysis").iterdir()}

    calls.clear()
    again, findings_again = study.run_study(config, out)
    def verdicts(found):
        return {m: [f.verdict for f in fs] for m, fs in found.items()}

    assert calls == {} and again == report and verdicts(findings_again) == verdicts(findings)  # all read back
    assert {p: p.stat().st_mtime_ns for p in (model / "analysis").iterdir()} == stamps

    other = load_study_config(_small_study(tmp_path / "other.toml", model_dir, n_eval=2))
    with pytest.raises(RefusalLabError) as caught:
        study.run_study(other, out)
    assert str(caught.value) == (f"{out} was created with config evaluate.n_eval = 3, not 2: use the same settings "
                                 "to resume, or a new --out")
    assert calls == {}


def test_paper_config_fails_fast_and_clearly_offline(tmp_path):
    started = time.perf_counter()
    result = _cli("study", "--config", ROOT / "configs" / "paper.toml", "--out", tmp_path / "paper", timeout=120)
    assert result.returncode == 1
    assert "is not available here" in result.stderr and "google/gemma" in result.stderr.lower()
    assert len(result.stderr.strip().splitlines()) == 1
    assert time.perf_counter() - started < 60
    assert not (tmp_path / "paper" / "study.json").exists()


def test_configs_parse_and_paper_covers_the_seed_models():
    demo = load_study_config(ROOT / "configs" / "demo.toml")
    assert demo.models == ["qwen2.5-coder-0.5b-instruct"] and set(demo.compare.kinds) == set(KINDS)
    assert demo.evaluate.n_eval >= 100 and "first_token_refusal" in demo.evaluate.metrics  # power where it is cheap
    both = load_study_config(ROOT / "configs" / "both.toml")
    assert both.models == ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]
    assert both.model_dump(exclude={"models"}) == demo.model_dump(exclude={"models"})  # the demo's study on both
    paper = load_study_config(ROOT / "configs" / "paper.toml")
    # the model types their hub configs declare; each has an adapter and a tiny-config test architecture
    declared = {"google/gemma-2b-it": "gemma", "01-ai/Yi-6B-Chat": "llama", "Qwen/Qwen1.5-1.8B-Chat": "qwen2",
                "meta-llama/Llama-2-7b-chat-hf": "llama", "meta-llama/Meta-Llama-3-8B-Instruct": "llama"}
    assert paper.models == list(declared)
    assert set(declared.values()) <= set(SUPPORTED_MODEL_TYPES) & set(ARCHITECTURES)


def test_study_usage_errors_are_one_line(tmp_path):
    result = _cli("study", "--out", tmp_path / "x")
    assert result.returncode == 2 and "Missing option '--config'" in result.stderr
    bad = tmp_path / "bad.toml"
    for key, value in (("bogus", "1"), ("text_sets", '["wiki"]')):
        bad.write_text(f'models = ["qwen2.5-coder-0.5b-instruct"]\n[evaluate]\n{key} = {value}\n')
        result = _cli("study", "--config", bad, "--out", tmp_path / "y")
        assert result.returncode != 0 and f"evaluate.{key}" in result.stderr, result.stderr
    assert shutil.which(str(CLI)) is not None
