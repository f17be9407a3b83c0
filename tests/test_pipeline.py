"""One pipeline for every method: fit → select at every scope → compare, through the API and the CLI (tiny models)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import invoke_cli as invoke
from conftest import tiny_model

import refusal_lab.evaluation.suite as suite_module
from refusal_lab.evaluation.store import ResultsStore
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.core.artifacts import Provenance
from refusal_lab.fitting.inlp import INLPConfig, fit_inlp
from refusal_lab.methods.registry import MethodsConfig
from refusal_lab.pipeline.artifacts import CLOSEST, chosen_for_scope, load_chosen, selected_scopes
from refusal_lab.pipeline.extraction import select_candidates
from refusal_lab.selection.select import COLUMNS, SelectionConfig

D = 64
HARMFUL = ["do a bad thing now", "another bad request", "make trouble please", "cause harm today"]
HARMLESS = ["bake a cake", "write a poem", "plan a picnic", "explain rainbows"]
LOOSE = dict(kl_threshold=1e9, induce_threshold=-1e9, min_inlp_accuracy=0.0)
METHODS = ["inlp", "flip", "classifier", "leace", "subspace"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _inlp_store(accuracies: dict[tuple[int, int], float]):
    """INLP subspaces on planted data, with the recorded first-classifier accuracy the filter reads."""
    stores = {}
    g = torch.Generator().manual_seed(0)
    for i, ((layer, position), acc) in enumerate(accuracies.items()):
        y = torch.cat([torch.ones(40), torch.zeros(40)]).long()
        X = torch.randn(80, D, generator=g) + 2.0 * y[:, None] * torch.randn(D, generator=g)
        result = fit_inlp(X, y, INLPConfig(max_iterations=2, stop="fixed"))
        result.oof_accuracies[0] = acc
        stores[(layer, position, None)] = result.to_subspace(Provenance("tiny", "inlp", D, layer, position, "h",
                                                                        {"n_layers": 5}))
    return stores


@pytest.mark.parametrize("mode", ["exhaustive", "fast"])
def test_inlp_selection_ranks_and_respects_accuracy_and_layer_filters(mode):
    lm = tiny_model("llama", n_layers=5)
    store = _inlp_store({(0, -1): 0.95, (1, -1): 0.5, (1, -2): 0.92, (2, -1): 0.99, (4, -1): 1.0})
    config = SelectionConfig(mode=mode, finalists=10, **{**LOOSE, "min_inlp_accuracy": 0.9})
    selection = select_candidates(lm, "inlp", store, "layer", HARMFUL, HARMLESS, config, MethodsConfig())
    table = selection.table()
    assert len(table) == 5 and table.iloc[0]["status"] == "selected" and tuple(table.columns) == COLUMNS
    status = {(r.layer, r.position): r.status for r in table.itertuples()}
    assert status[(1, -1)] == "filtered: INLP accuracy < 0.9"
    assert status[(4, -1)] == "filtered: layer >= 0.8L"  # 4 >= 0.8 * 5
    chosen = selection.chosen
    assert (chosen.layer, chosen.position) in {(0, -1), (1, -2), (2, -1)} and chosen.inlp_accuracy >= 0.9
    assert math.isnan(chosen.induce) and chosen.kl >= 0  # an erasure has no induce score
    evaluated = table[~table["bypass"].isna()]
    assert chosen.bypass == evaluated["bypass"].min()


def test_flip_selection_uses_induce_and_shares_the_nullspace_kl():
    lm = tiny_model("llama", n_layers=4)
    store = _inlp_store({(0, -1): 1.0, (1, -1): 1.0, (2, -1): 1.0})
    cache: dict = {}
    config = SelectionConfig(mode="exhaustive", **LOOSE)
    null = select_candidates(lm, "inlp", store, "layer", HARMFUL, HARMLESS, config, MethodsConfig(),
                             kl_cache=cache)
    flip = select_candidates(lm, "flip", store, "layer", HARMFUL, HARMLESS, config, MethodsConfig(),
                             kl_cache=cache)
    kl_null = {(r.layer, r.position): r.kl for r in null.table().itertuples()}
    checked = [r for r in flip.table().itertuples() if r.status != "not evaluated"]
    assert checked
    for r in checked:
        assert not math.isnan(r.induce)
        assert r.kl == kl_null[(r.layer, r.position)]  # the flip's KL filter is the nullspace's
    strict = select_candidates(lm, "flip", store, "layer", HARMFUL, HARMLESS,
                               config.model_copy(update={"induce_threshold": 1e9}), MethodsConfig())
    assert strict.chosen is None and all(s.startswith("filtered: induce") for s in strict.table()["status"])


def _config(path, **extra):
    config = {"n_train": 16, "n_val": 8, "batch_size": 16, "dtype": "float32",
              "selection": {**LOOSE, "scopes": ["layer", "all"], "finalists": 4},
              "methods": {"inlp_max_iterations": 3, "subspace_k": 2},
              "compare": {"measure": "first-token", "n_eval": 3, "control_seeds": 1}, **extra}
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def extracted_run(model_dir, tmp_path_factory):
    """extract every method at scopes layer and all through the CLI on the tiny model, with loose filters."""
    root = tmp_path_factory.mktemp("pipeline-run")
    mp = pytest.MonkeyPatch()
    mp.setenv("REFUSAL_LAB_CACHE", str(root / "cache"))
    run = root / "run"
    try:
        args = ["extract", "--model", model_dir, "--out", run, "--config", _config(root / "config.json")]
        for method in METHODS:
            args += ["--method", method]
        result, text = invoke(*args)
        assert result.exit_code == 0, text
        yield run
    finally:
        mp.undo()


def test_every_method_is_selected_at_every_scope_with_one_schema(extracted_run):
    methods = extracted_run / "methods"
    for method in ["dim", *METHODS]:
        assert selected_scopes(extracted_run, method) == ["all", "layer"]
        for scope in ("layer", "all"):
            table = pd.read_csv(methods / method / f"selection-{scope}.csv")
            assert tuple(table.columns) == COLUMNS and set(table["scope"]) == {scope}
            assert table.iloc[0]["status"] == "selected" and table.iloc[0]["method"] == method
            chosen = load_chosen(extracted_run, method, scope, D)
            assert chosen.provenance.extra["selection"]["scope"] == scope
    ranking = json.loads((extracted_run / "ranking.json").read_text())["ranked"]
    assert len({layer for layer, _ in ranking}) == len(ranking) >= 2
    stack = load_chosen(extracted_run, "subspace", "all", D)
    assert stack.rank <= 2 and stack.provenance.extra["layers"] == [layer for layer, _ in ranking[:2]]


def test_extract_resumes_without_refitting_or_reselecting(extracted_run, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("REFUSAL_LAB_CACHE", str(tmp_path / "cache"))
    files = sorted((extracted_run / "methods").rglob("*"))
    stamps = {p: p.stat().st_mtime_ns for p in files if p.is_file()}
    result, text = invoke("extract", "--model", model_dir, "--out", extracted_run, "--method", "inlp")
    assert result.exit_code == 0, text
    assert {p: p.stat().st_mtime_ns for p in files if p.is_file()} == stamps


def test_an_interrupted_selection_is_redone_not_read_as_nothing_passed(extracted_run, model_dir, tmp_path,
                                                                        monkeypatch):

    from refusal_lab.pipeline import extraction
    from refusal_lab.pipeline.rundir import RunDirectory

    monkeypatch.setenv("REFUSAL_LAB_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    shutil.copytree(extracted_run, run)
    marker = run / "stages" / "select-leace-layer.done"
    marker.unlink()  # the table and the chosen artifact were written, the marker not: the stage was in flight
    (run / "methods" / "leace" / "selection-layer.csv").write_text("half a table")
    assert (run / "methods" / "leace" / "chosen-layer.json").exists() and load_chosen(run, "leace", "layer") is None
    assert selected_scopes(run, "leace") == ["all"]
    selected, fitted = [], []
    real_select, real_save = extraction.select_candidates, extraction.save_candidates
    monkeypatch.setattr(extraction, "select_candidates",
                        lambda lm, name, cands, scope, *a, **k: selected.append((name, scope)) or real_select(
                            lm, name, cands, scope, *a, **k))
    monkeypatch.setattr(extraction, "save_candidates", lambda root, c: fitted.append(root.name) or real_save(root, c))
    result, text = invoke("extract", "--model", model_dir, "--out", run, "--method", "leace")
    assert result.exit_code == 0, text
    assert selected == [("leace", "layer")] and fitted == []  # only the unfinished stage ran
    assert RunDirectory(run).done("select-leace-layer") and load_chosen(run, "leace", "layer", D) is not None
    assert pd.read_csv(run / "methods" / "leace" / "selection-layer.csv").iloc[0]["status"] == "selected"


@pytest.mark.parametrize("args", [
    ["--intervention", "nullspace"],
    ["--intervention", "flip", "--alpha", 3, "--scope", "all"],
    ["--intervention", "rank-k", "--k", 1, "--site", "resid_pre", "--site", "mlp_out"],
    ["--intervention", "subspace", "--k", 1],
    ["--intervention", "actadd", "--scale", -2, "--scope", "all"],
])
def test_cli_generate_with_every_kind(extracted_run, model_dir, tmp_path, args):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello there\n")
    out = tmp_path / "o.jsonl"
    result, text = invoke("generate", "--model", model_dir, "--prompts", prompts, "--out", out, "--run",
                          extracted_run, "--max-new-tokens", 2, *args)
    assert result.exit_code == 0, text
    assert len(out.read_text().splitlines()) == 1


def test_compare_uses_the_artifact_selected_at_each_scope_and_resumes(extracted_run, model_dir, monkeypatch):
    args = ["compare", "--model", model_dir, "--run", extracted_run, "--n-eval", 3, "--scope", "layer",
            "--scope", "all", "--kind", "ablate", "--kind", "nullspace", "--kind", "leace"]
    result, text = invoke(*args)
    assert result.exit_code == 0, text
    out = extracted_run / "comparison" / "first-token"
    table = pd.read_csv(out / "comparison.csv").set_index("name")
    assert table.iloc[0].name == "baseline" and table.iloc[0]["delta_harmful"] == 0
    for scope in ("layer", "all"):
        row = table.loc[f"ablate[{scope}]"]
        chosen = load_chosen(extracted_run, "dim", scope, D)
        assert row["selected_at"] == scope and row["layer"] == chosen.provenance.layer
        assert row["kl_val"] == pytest.approx(chosen.provenance.extra["selection"]["kl"])
        assert row["n_harmful"] == 3 and row["kl_harmless"] >= 0
        assert not math.isnan(row["control_refusal_harmful"])
    assert not any(n.startswith("leace") and "random" in n for n in table.index)  # no random analogue
    forwards = []
    real = suite_module.last_token_logprobs
    monkeypatch.setattr(suite_module, "last_token_logprobs", lambda *a, **k: forwards.append(1) or real(*a, **k))
    result, text = invoke(*args)  # resumes: every value read from the store, nothing recomputed
    assert result.exit_code == 0, text
    assert forwards == [] and pd.read_csv(out / "comparison.csv").set_index("name").equals(table)
    result, text = invoke(*args[:5], "--n-eval", 2)
    assert result.exit_code != 0 and "other prompts" in text and "new --out" in text


def test_compare_landing_writes_every_layer_beside_the_first_token_rates(extracted_run, model_dir):
    result, text = invoke("compare", "--model", model_dir, "--run", extracted_run, "--n-eval", 3, "--measure",
                          "landing", "--scope", "layer", "--kind", "ablate", "--kind", "flip", "--control-seeds", 0)
    assert result.exit_code == 0, text
    out = extracted_run / "comparison" / "landing"
    table = pd.read_csv(out / "comparison.csv").set_index("name")
    assert list(table.index) == ["baseline", "ablate[layer]", "flip[layer,alpha=2,flip_variant=input]",
                                 "flip[layer,alpha=2,flip_variant=writes]",
                                 "flip[layer,alpha=2,flip_variant=input,centered]",
                                 "flip[layer,alpha=2,flip_variant=writes,centered]"]
    assert table["refusal_harmful"].between(0, 1).all() and "landing_harmful" not in table  # lists: landing.csv
    long = pd.read_csv(out / "landing.csv")
    n_layers = int(long["layer"].max()) + 1
    assert len(long) == len(table) * 2 * n_layers
    last = long[long["layer"] == n_layers - 1].set_index(["name", "side"])["coordinate"]
    for name, row in table.iterrows():
        assert last[(name, "harmful")] == pytest.approx(row["landing_harmful_last"])
        assert last[(name, "harmless")] == pytest.approx(row["landing_harmless_last"])
    assert long[long["layer"] == 0]["coordinate"].isna().all()  # one template token for every prompt: no axis
    assert long[long["layer"] > 0]["coordinate"].notna().all()


def test_a_selection_that_chose_nothing_is_compared_at_its_closest_candidate(extracted_run, tmp_path):

    from refusal_lab.pipeline.rundir import RunDirectory

    run = tmp_path / "run"
    shutil.copytree(extracted_run, run)
    rd = RunDirectory(run)
    for chosen in (run / "methods" / "leace").glob("chosen-*"):
        chosen.unlink()
    for scope in ("layer", "all"):  # as a selection that chose nothing records itself
        finished = rd.record(f"select-leace-{scope}")
        with rd.stage(f"select-leace-{scope}") as info:
            info |= finished["info"] | {"chosen": False}
    assert load_chosen(run, "leace", "layer", D) is None
    artifact, at = chosen_for_scope(run, "leace", "layer", D)
    table = pd.read_csv(run / "methods" / "leace" / "selection-layer.csv")
    best = table[table["bypass"].notna()].sort_values("bypass").iloc[0]
    assert at == "all" or (artifact.provenance.layer, artifact.provenance.position) == (best["layer"],
                                                                                         best["position"])
    assert artifact.provenance.extra["selection"]["status"] == CLOSEST


def test_run_is_the_comparison_preset_and_resumes(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("REFUSAL_LAB_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "model": str(model_dir), "n_train": 8, "n_val": 4, "batch_size": 8, "dtype": "float32",
        "selection": {"kl_threshold": 1e9, "induce_threshold": -1e9},
        "compare": {"measure": "generation", "n_eval": 3, "kinds": ["ablate", "actadd"], "scopes": ["all"],
                    "sweep_max_k": 0, "center_variants": False, "max_new_tokens": 2}}))
    out = tmp_path / "run"
    result, text = invoke("run", "--config", config, "--out", out)
    assert result.exit_code == 0, text
    table = pd.read_csv(out / "comparison" / "generation" / "comparison.csv")
    assert list(table["name"]) == ["baseline", "ablate[all]", "ablate[all]~random0", "actadd[layer,scale=1]",
                                   "actadd[layer,scale=1]~random0", "actadd[layer,scale=-1]",
                                   "actadd[layer,scale=-1]~random0"]
    assert (table["n_harmful"] == 3).all() and table["refusal_harmful"].between(0, 1).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype"] == "torch.float32" and {"extract", "compare-generation"} <= set(manifest["timings_s"])
    store = ResultsStore(out / "comparison" / "generation")
    stored = store.db.execute("SELECT count(DISTINCT intervention_hash), count(*) FROM generations").fetchone()
    store.close()
    assert stored == (7, 7 * 6)  # every condition's greedy tokens, both sides
    generated = []
    real = suite_module.generate_ids
    monkeypatch.setattr(suite_module, "generate_ids", lambda *a, **k: generated.append(1) or real(*a, **k))
    result, text = invoke("run", "--config", config, "--out", out)  # resumes: nothing regenerated
    assert result.exit_code == 0, text
    assert generated == []


def test_run_fits_the_train_split_once_for_extraction_and_comparison(model_dir, tmp_path, monkeypatch):
    """Extraction's fit context (train activations, per-layer LEACE erasers) is the one the comparison uses."""
    import refusal_lab.methods.registry as registry
    import refusal_lab.pipeline.experiment as experiment
    import refusal_lab.pipeline.extraction as extraction

    monkeypatch.setenv("REFUSAL_LAB_CACHE", str(tmp_path / "cache"))
    calls = {"context": 0, "erasers": []}

    def counted_context(*args, **kwargs):
        calls["context"] += 1
        return real_context(*args, **kwargs)

    def counted_erasers(*args, **kwargs):
        calls["erasers"].append(kwargs["position"])
        return real_erasers(*args, **kwargs)

    real_context, real_erasers = extraction.fit_context, registry.fit_leace_per_layer
    for module in (extraction, experiment):
        monkeypatch.setattr(module, "fit_context", counted_context)
    monkeypatch.setattr(registry, "fit_leace_per_layer", counted_erasers)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "model": str(model_dir), "n_train": 8, "n_val": 4, "batch_size": 8, "dtype": "float32",
        "extract_methods": ["dim", "leace"], "selection": {**LOOSE, "scopes": ["all"], "finalists": 2},
        "compare": {"n_eval": 3, "kinds": ["leace"], "scopes": ["all"], "sweep_max_k": 0,
                    "center_variants": False, "control_seeds": 0}}))
    result, text = invoke("run", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 0, text
    table = pd.read_csv(tmp_path / "run" / "comparison" / "first-token" / "comparison.csv")
    assert list(table["name"]) == ["baseline", "leace[all]"]
    assert calls["context"] == 1
    assert calls["erasers"] and len(calls["erasers"]) == len(set(calls["erasers"]))  # once per position


@pytest.mark.parametrize("kind", ["ablate", "nullspace"])
def test_abliterate_bakes_any_projection_the_run_chose(extracted_run, model_dir, tmp_path, kind):
    """The exported directory (plain transformers) equals the hooked projection at every layer and site, computed
    here from the chosen artifact's basis."""
    from transformers import AutoModelForCausalLM

    from refusal_lab.interventions import Intervention, Projection, apply_interventions
    from refusal_lab.models import load_model

    out = tmp_path / kind
    result, text = invoke("abliterate", "--model", model_dir, "--run", extracted_run, "--out", out, "--kind", kind,
                          "--dtype", "float32")
    assert result.exit_code == 0, text
    artifact = load_chosen(extracted_run, "dim" if kind == "ablate" else "inlp", "all", D)
    basis = artifact.unit[None, :] if kind == "ablate" else artifact.basis
    lm = load_model(str(model_dir), dtype="float32")
    ids = torch.tensor([[5, 20, 30, 40, 50]])
    with torch.no_grad(), apply_interventions(lm, [Intervention(Projection(basis), tuple(range(lm.n_layers)))]):
        hooked = lm.model(input_ids=ids).logits
    with torch.no_grad():
        edited = AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits
    torch.testing.assert_close(edited, hooked, atol=2e-4, rtol=1e-4)
    result, text = invoke("abliterate", "--model", model_dir, "--run", extracted_run, "--out", tmp_path / "x",
                          "--kind", "actadd")
    assert result.exit_code != 0 and "projection" in text


def test_evaluate_scores_an_intervention_beside_its_controls_and_resumes(extracted_run, model_dir, tmp_path):
    import duckdb

    out = tmp_path / "results"
    args = ["evaluate", "--model", model_dir, "--run", extracted_run, "--out", out, "--eval-set", "test",
            "--n-eval", 3, "--intervention", "ablate[all]", "--metrics", "refusal,harmless_refusal,kl,repetition",
            "--judge", "substring", "--control-seeds", 3]
    result, text = invoke(*args)
    assert result.exit_code == 0, text
    assert "unit 1/" in text and "eta" in text  # without a terminal, one progress line per finished unit
    frame = pd.read_parquet(out / "results.parquet")
    assert set(frame["intervention"]) == {"baseline", "ablate[all]"} | {f"ablate[all]~random{s}" for s in range(3)}
    assert set(frame["metric"]) == {"refusal", "harmless_refusal", "kl", "repetition"}
    assert set(frame.loc[frame["metric"] == "refusal", "max_new_tokens"]) == {24, 128}
    main = frame[(frame["intervention"] == "ablate[all]") & (frame["metric"] == "kl")].iloc[0]
    assert main["n"] == 3 and main["value"] >= 0 and main["baseline"] == pytest.approx(0, abs=1e-5)
    assert main["delta"] == pytest.approx(-min(main["value"], 1.0), abs=1e-5)
    assert main["vs_control_ci_low"] <= main["vs_control"] <= main["vs_control_ci_high"]
    assert main["specific"] == (main["vs_control_ci_low"] > 0 or main["vs_control_ci_high"] < 0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_harmful"] == 3 and all(not r["control"] for r in summary["rows"])
    with duckdb.connect(str(out / "results.duckdb"), read_only=True) as db:
        n_items = db.execute("SELECT count(*) FROM items").fetchone()[0]
        n_generations = db.execute("SELECT count(*) FROM generations").fetchone()[0]
    assert n_generations == 5 * 2 * 3  # five conditions × two sides × three prompts, at the longest length
    result, text = invoke(*args)  # a rerun computes nothing new
    assert result.exit_code == 0, text
    with duckdb.connect(str(out / "results.duckdb"), read_only=True) as db:
        assert db.execute("SELECT count(*) FROM items").fetchone()[0] == n_items
    result, text = invoke(*args[:-6], "--metrics", "refusal,bogus")
    assert result.exit_code != 0 and "bogus" in text


def test_llm_judge_can_grade_with_its_own_refusal_direction_ablated(extracted_run, model_dir):
    from refusal_lab.evaluation.llm_judge import LlmJudge
    from refusal_lab.models.load import load_model
    from refusal_lab.pipeline.judging import RunAblation

    lm = load_model(str(model_dir), dtype="float32")
    plain = LlmJudge(model=lm, cache=False)
    ablated = LlmJudge(model=lm, cache=False, ablation=RunAblation(extracted_run))
    assert plain.fingerprint != ablated.fingerprint and plain.interventions == []
    (iv,) = ablated.interventions
    chosen = load_chosen(extracted_run, "dim", "all", D)
    assert iv.layers == tuple(range(lm.n_layers))
    assert torch.allclose(iv.transform.basis[0].float(), chosen.unit.float(), atol=1e-6)
    probe = torch.tensor([[5, 6, 7, 8]])
    before = lm.model(input_ids=probe).logits
    grades = ablated.judge(["say hi"], ["hi"])
    assert grades[0].refusal in (0.0, 0.5, 1.0)
    assert torch.equal(lm.model(input_ids=probe).logits, before)  # the ablation hooks were removed afterwards


def test_default_llm_judge_ablates_its_own_direction_extracted_once(model_dir, tmp_path, monkeypatch):
    import hashlib

    import refusal_lab.pipeline.judging as judging
    from refusal_lab.evaluation.llm_judge import LlmJudge
    from refusal_lab.models.load import load_model
    from refusal_lab.pipeline.experiment import RunConfig
    from refusal_lab.pipeline.judging import RunAblation, make_judge

    monkeypatch.setenv("REFUSAL_LAB_CACHE", str(tmp_path / "cache"))
    config = RunConfig.model_validate(json.loads(_config(tmp_path / "c.json").read_text())
                                      | {"model": str(model_dir), "extract_methods": ["dim"],
                                         "selection": {**LOOSE, "scopes": ["all"], "finalists": 4}})
    lm = load_model(str(model_dir), dtype="float32")
    resolver = RunAblation("auto", config)
    auto = LlmJudge(model=lm, cache=False, ablation=resolver)
    assert auto.name.endswith("-ablated") and resolver.run_dir is None  # nothing extracted before first use
    auto.fingerprint
    run = resolver.run_dir
    assert run.parent == tmp_path / "cache" / "judge-runs" and (run / "methods" / "dim" / "chosen-all.json").exists()
    files = sorted((run / "methods" / "dim").rglob("*.safetensors"))
    assert auto.ablation[1] == hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]
    (iv,) = auto.interventions
    assert iv.layers == tuple(range(lm.n_layers))
    assert torch.allclose(iv.transform.basis[0].float(), load_chosen(run, "dim", "all", D).unit.float(), atol=1e-6)
    # the same judge as passing that run by hand; a second use reuses it instead of extracting again
    assert LlmJudge(model=lm, cache=False, ablation=RunAblation(run)).fingerprint == auto.fingerprint
    monkeypatch.setattr(judging, "run_extract", lambda *a, **k: pytest.fail("extracted again"))
    assert judging.judge_run(lm, config) == run
    # make_judge: ablated by default, plain with "none", an endpoint is graded as it is
    assert make_judge(f"llm:{model_dir}", cache=False).name.endswith("-ablated")
    assert not make_judge(f"llm:{model_dir}", cache=False, ablate_run="none").name.endswith("-ablated")
    endpoint = make_judge("llm:some-model", url="http://127.0.0.1:9", cache=False)
    assert endpoint.ablation is None and endpoint.name == "llm:some-model"
    with pytest.raises(RefusalLabError, match="needs a local judge model"):  # a run given by hand: refused
        make_judge("llm:some-model", url="http://127.0.0.1:9", cache=False, ablate_run=run)
    with pytest.raises(RefusalLabError, match="no DiM direction selected at scope all"):
        RunAblation(tmp_path)  # a run given by hand is checked at once


@pytest.mark.parametrize("recorded, expected", [(2.0, 2.0), (math.nan, 1.0), (None, 1.0)])
def test_actadd_rows_use_the_selected_scale_or_one(recorded, expected):
    from refusal_lab.core.artifacts import Direction
    from refusal_lab.pipeline.conditions import selected_scale

    extra = {} if recorded is None else {"selection": {"induce_scale": recorded}}
    artifact = Direction(torch.ones(D), Provenance("tiny", "classifier", D, 1, -1, "h", extra))
    assert selected_scale(artifact) == expected


def test_compare_rates_and_kl_equal_their_definitions_computed_by_hand(extracted_run, model_dir, tmp_path):
    """ablate[layer]'s first-token refusal rates and KL in comparison.csv against one plain forward per prompt with
    the projection h ↦ h − (h·r̂) r̂ written by hand at its layer's input and both writes (tests/hand_hooks.py)."""
    from hand_hooks import hand_hooks

    from refusal_lab.data import Splits
    from refusal_lab.models import load_model

    run = tmp_path / "run"
    shutil.copytree(extracted_run, run)
    shutil.rmtree(run / "comparison", ignore_errors=True)
    result, text = invoke("compare", "--model", model_dir, "--run", run, "--n-eval", 3, "--scope", "layer",
                          "--kind", "ablate", "--control-seeds", 0)
    assert result.exit_code == 0, text
    row = pd.read_csv(run / "comparison" / "first-token" / "comparison.csv").set_index("name").loc[
        "ablate[layer]"]
    chosen = load_chosen(extracted_run, "dim", "layer", D)
    r = chosen.vector / chosen.vector.norm()
    lm = load_model(str(model_dir), dtype="float32")
    splits = Splits.load(extracted_run / "splits.json")

    def last_logprobs(prompt: str, ablated: bool) -> torch.Tensor:
        ids = lm.tokenizer(lm.format([prompt]), add_special_tokens=False, return_tensors="pt")["input_ids"]
        ablate = {chosen.provenance.layer: lambda h: h - (h @ r)[..., None] * r} if ablated else {}
        with torch.no_grad(), hand_hooks(lm, inputs=ablate, writes=ablate):
            return torch.log_softmax(lm.model(input_ids=ids).logits[0, -1].double(), -1)

    def refused(logprobs: torch.Tensor) -> bool:
        p = logprobs[list(lm.refusal_token_ids)].exp().sum()
        return bool(p / (1 - p) > 1)  # log-odds > 0

    harmful, harmless = splits.test_harmful.texts[:3], splits.test_harmless.texts[:3]
    assert row["refusal_harmful"] == pytest.approx(np.mean([refused(last_logprobs(p, True)) for p in harmful]))
    assert row["refusal_harmless"] == pytest.approx(np.mean([refused(last_logprobs(p, True)) for p in harmless]))
    kl = [float((b.exp() * (b - a)).sum()) for b, a in ((last_logprobs(p, False), last_logprobs(p, True))
                                                        for p in harmless)]
    assert row["kl_harmless"] == pytest.approx(np.mean(kl), rel=1e-3, abs=1e-6)
