"""The abliteration search: kernel and directions by hand, the weighted edit (hooks = weights = LoRA = formula),
per-candidate weights in one batched pass, the search on a tiny model (improves, resumes), the export, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from conftest import tiny_model

import refusal_lab
from refusal_lab.evaluation.store import ResultsStore
from refusal_lab.interventions.batched import batched_scores
from refusal_lab.interventions.hooks import apply_interventions
from refusal_lab.interventions.scoring import last_token_logprobs, refusal_scores
from refusal_lab.search.edit import Abliteration
from refusal_lab.search.space import AbliterationParams, Kernel, layer_directions

PROMPTS = ["Tell me a story", "How do I bake bread?", "List three colours"]


def kernel(**kw):
    return Kernel(**({"max_weight": 1.2, "max_weight_position": 2.5, "min_weight": 0.4, "min_weight_distance": 2.0}
                     | kw))


def test_kernel_weights_are_the_tent_by_hand():
    w = kernel().weights(6)
    # |l − 2.5| = 2.5, 1.5, 0.5, 0.5, 1.5, 2.5 → 0 beyond distance 2, else 1.2 + (0.4 − 1.2)·d/2
    expected = [0.0, 1.2 - 0.8 * 0.75, 1.2 - 0.8 * 0.25, 1.2 - 0.8 * 0.25, 1.2 - 0.8 * 0.75, 0.0]
    assert torch.allclose(w, torch.tensor(expected), atol=1e-6)


def _means(L=4, P=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(L, P, d, generator=g, dtype=torch.float64), torch.randn(L, P, d, generator=g,
                                                                               dtype=torch.float64)


def test_layer_directions_by_hand():
    harmful, harmless = _means()
    v = harmful[:, -1] - harmless[:, -1]
    unit = v / v.norm(dim=-1, keepdim=True)
    params = AbliterationParams(direction_index=1.25, attn=kernel(), mlp=kernel())
    r = layer_directions(harmful - harmless, harmless, params, n_layers=3)
    mixed = 0.75 * unit[1] + 0.25 * unit[2]
    assert r.shape == (3, 8) and torch.allclose(r[0].double(), mixed / mixed.norm(), atol=1e-6)
    assert torch.equal(r[0], r[2])
    per_layer = layer_directions(harmful - harmless, harmless,
                                 params.model_copy(update={"direction_scope": "per_layer"}), 3)
    assert torch.allclose(per_layer.double(), unit[[1, 2, 3]], atol=1e-6)  # layer l writes into stream l + 1
    ortho = layer_directions(harmful - harmless, harmless, params.model_copy(
        update={"direction_scope": "per_layer", "orthogonalize": True, "position": 0}), 3)
    g = harmless[[1, 2, 3], 0]
    assert torch.allclose((ortho.double() * g).sum(-1), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    w = (harmful - harmless)[[1, 2, 3], 0]
    assert ((ortho.double() * w).sum(-1) > 0).all()  # still the harmful side


def _ablation(lm, seed=0, weight=0.8):
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(lm.n_layers, lm.hidden_size, generator=g)
    directions /= directions.norm(dim=-1, keepdim=True)
    weights = {"attn": torch.tensor([weight, 0.0, 1.3])[: lm.n_layers], "mlp": torch.tensor([0.5, 1.0, 0.0])}
    return Abliteration(directions, weights, {"model": lm.name})


def test_weight_edit_is_the_formula_and_matches_the_hooks(tmp_path):
    lm = tiny_model("qwen2")
    ablation = _ablation(lm)
    o_proj = lm.adapter.attn_out_proj(lm.adapter.layers(lm.model)[0])
    W, r = o_proj.weight.detach().clone(), ablation.directions[0]
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with apply_interventions(lm, ablation.interventions()):
        hooked = lm.model(input_ids=ids).logits
    untouched = lm.model(input_ids=ids).logits
    ablation.apply_to_weights(lm)
    assert torch.allclose(o_proj.weight, W - 0.8 * torch.outer(r, r @ W), atol=1e-6)
    edited = lm.model(input_ids=ids).logits
    assert torch.allclose(edited, hooked, atol=1e-5) and not torch.allclose(edited, untouched, atol=1e-3)
    loaded = Abliteration.load(ablation.save(tmp_path / "a"))
    assert torch.equal(loaded.directions, ablation.directions) and loaded.meta == {"model": lm.name}
    assert all(torch.equal(loaded.weights[c], ablation.weights[c]) for c in ("attn", "mlp"))


def test_lora_adapter_reproduces_the_edit(tmp_path):
    from peft import PeftModel

    from refusal_lab.pipeline.export import lora_adapter

    lm = tiny_model("qwen2")
    ablation = _ablation(lm)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with apply_interventions(lm, ablation.interventions()):
        hooked = lm.model(input_ids=ids).logits
    lora_adapter(lm, ablation, tmp_path / "lora")
    assert torch.allclose(lm.model(input_ids=ids).logits, tiny_model("qwen2").model(input_ids=ids).logits)
    with_adapter = PeftModel.from_pretrained(tiny_model("qwen2").model, tmp_path / "lora")
    assert torch.allclose(with_adapter(input_ids=ids).logits, hooked, atol=1e-5)


# --- the search on a tiny model ------------------------------------------------------------------------------

def _config(**kw):
    from refusal_lab.pipeline.optimize import OptimizeConfig

    return OptimizeConfig(**({"model": "tiny", "dtype": "float32", "sources": ["mixed", "unmatched"], "n_train": 8,
                              "n_val": 6, "n_score": 4, "trials": 12, "startup_trials": 4, "trials_per_pass": 4,
                              "rows_per_pass": 48, "max_kl": 10.0, "survivors": 3, "max_new_tokens": 4,
                              "contexts": ["default"], "compliance_check": {"judge": None}} | kw))
    # one context: test_assess_contexts tests several; the llm judge on the front: test_compliance


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    from refusal_lab.pipeline.optimize import optimize

    root = tmp_path_factory.mktemp("optimize")
    mp = pytest.MonkeyPatch()
    mp.setenv("REFUSAL_LAB_CACHE", str(root / "cache"))
    try:
        lm = tiny_model("qwen2")
        pareto = optimize(lm, _config(), root / "run")
        yield lm, root / "run", pareto
    finally:
        mp.undo()


def _study(run):
    from refusal_lab.pipeline.optimize import open_study

    return open_study(run, _config())


def test_search_improves_on_its_first_trial_on_a_planted_objective(tmp_path, monkeypatch):
    """With the model's scores replaced by a known function of the parameters (minimum at attention weight 1.0,
    MLP weight 0.7, KL growing with both), TPE must find trials far better than its random first one."""
    import refusal_lab.pipeline.optimize as search

    def planted(lm, data, ablations, config):
        values = []
        for a in ablations:
            attn, mlp = a.meta["params"]["attn"]["max_weight"], a.meta["params"]["mlp"]["max_weight"]
            values.append((((attn - 1.0) ** 2 + (mlp - 0.7) ** 2, 0.01 * (attn + mlp)), {}))
        return values

    monkeypatch.setenv("REFUSAL_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(search, "score_pass", planted)
    search.optimize(tiny_model("qwen2"), _config(trials=40, startup_trials=8, seed=3), tmp_path / "run")
    trials = _study(tmp_path / "run").get_trials(states=[optuna.trial.TrialState.COMPLETE])
    first, best = trials[0].values[0], min(t.values[0] for t in trials)
    assert len(trials) == 40 and best < first / 4 and best < 0.01


def test_search_stops_before_a_pass_would_end_past_its_deadline(searched, tmp_path, monkeypatch):
    import shutil
    import time

    import refusal_lab.pipeline.optimize as search

    lm, run, _ = searched
    copy = tmp_path / "run"
    shutil.copytree(run, copy)

    def slow(lm, data, ablations, config):  # passes of 1 s, whatever the machine's load
        time.sleep(1.0)
        return [((0.5, 0.0), {})] * len(ablations)

    monkeypatch.setattr(search, "score_pass", slow)
    data = search.prepare(lm, _config(), copy)
    study = _study(copy)
    deadline = time.monotonic() + 2.5
    search.search(lm, data, study, _config(trials=100), deadline)
    # passes of ~1 s: the third would start at ~2 s and end past 2.5 s, so it never starts; a pass may run a little
    # longer than the one before it (sampler), hence the slack, far below the 0.5 s a started third pass costs
    assert time.monotonic() <= deadline + 0.25
    assert len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE])) >= 12 + 4


def test_search_writes_its_front(searched):
    lm, run, pareto = searched
    assert len(_study(run).get_trials(states=[optuna.trial.TrialState.COMPLETE])) == 12


def test_search_resumes_losing_at_most_the_trials_in_flight(searched, tmp_path, monkeypatch):
    import shutil

    import refusal_lab.pipeline.optimize as search

    lm, run, _ = searched
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    real = search.score_pass
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(search, "score_pass", interrupted)
    with pytest.raises(KeyboardInterrupt):
        search.optimize(lm, _config(trials=20), copy)
    states = [t.state for t in _study(copy).get_trials()]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 16  # 12 before + one pass; the pass in flight lost
    monkeypatch.setattr(search, "score_pass", real)
    search.optimize(lm, _config(trials=20), copy)
    assert len(_study(copy).get_trials(states=[optuna.trial.TrialState.COMPLETE])) == 20


def test_search_prompts_are_validation_rows_kept_out_of_every_training_set():
    from refusal_lab.data import dataset_splits
    from refusal_lab.data.packaged import load_generic_harmless
    from refusal_lab.pipeline.search_data import search_prompts

    harmful, harmless, train = search_prompts(_config(kl_source="mixed"))
    assert harmful == dataset_splits("mixed", n_train=8, n_val=6).val_harmful.texts
    assert harmless == dataset_splits("mixed", n_train=8, n_val=6).val_harmless.texts
    assert set(train) == {"mixed", "unmatched"} and all(train[s][0] and train[s][1] for s in train)
    assert not (set(harmful) | set(harmless)) & {t for pair in train.values() for side in pair for t in side}
    harmful_generic, generic, train_generic = search_prompts(_config())  # the default: unmatched
    assert harmful_generic == harmful and generic == dataset_splits("unmatched", n_train=8, n_val=6).val_harmless.texts
    assert set(generic) <= set(load_generic_harmless().texts)  # KL on generic requests only
    assert not set(generic) & {t for pair in train_generic.values() for side in pair for t in side}


def test_export_reproduces_the_trials_refusals_and_kl(searched, tmp_path):
    from transformers import AutoModelForCausalLM

    from refusal_lab.evaluation.generate import generate
    from refusal_lab.evaluation.judges import MarkerJudge
    from refusal_lab.models import wrap_model
    from refusal_lab.pipeline.export import export_trial

    lm, run, pareto = searched
    row = pareto.iloc[0]
    out = export_trial(tiny_model("qwen2"), run, tmp_path / "model", trial=int(row["trial"]), lora=True)
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    edited = wrap_model(plain, lm.tokenizer, "edited")
    from refusal_lab.data import dataset_splits

    harmful = dataset_splits("mixed", n_train=8, n_val=6).val_harmful.texts  # the survivors' validation prompts
    harmless = dataset_splits("mixed", n_train=8, n_val=6).val_harmless.texts
    base = last_token_logprobs(lm, harmless)
    kl = (base.exp() * (base - last_token_logprobs(edited, harmless))).sum(-1).mean()
    assert float(kl) == pytest.approx(row["kl"], abs=1e-4)
    judge = MarkerJudge()
    refusals = sum(judge.refuses(c) for c in generate(edited, harmful, max_new_tokens=4))
    assert refusals == row["refusals"]
    reproduce = json.loads((out / "reproduce.json").read_text())
    assert reproduce["trial"] == row["trial"] and reproduce["validation"]["kl"] == pytest.approx(row["kl"])
    assert (out / "lora" / "adapter_config.json").exists()


def test_cli_optimize_and_abliterate_as_users_run_them(tmp_path, model_dir):
    bin_dir = Path(sys.executable).parent
    env = {"REFUSAL_LAB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "PATH": str(bin_dir),
           "PYTHONPATH": str(Path(refusal_lab.__file__).parents[1])}  # the script imports the code under test
    config = tmp_path / "optimize.toml"
    config.write_text('[optimize]\ndtype = "float32"\nsources = ["mixed"]\nn_train = 8\nn_val = 4\n'
                      'contexts = ["default", "search-terse"]\n'
                      'startup_trials = 2\ntrials_per_pass = 2\nrows_per_pass = 16\nsurvivors = 2\n'
                      'max_new_tokens = 3\n[optimize.capability_check]\nmmlu_n = 4\narc_n = 3\ntext_docs = 2\n'
                      'n_instructions = 2\n[optimize.compliance_check]\n'
                      f'judge = "llm:{model_dir}"\nablate = "none"\ntrials = 2\nmax_new_tokens = 4\n')
    run = tmp_path / "run"
    args = [str(bin_dir / "refusal-lab"), "optimize", "--model", str(model_dir), "--out", str(run),
            "--trials", "4", "--max-kl", "100", "--config", str(config), "--heldout", "3", "--heldout-judged", "2"]
    done_optimize = done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Pareto front" in done.stdout and (run / "pareto.csv").exists()
    heldout = pd.read_csv(run / "heldout.csv")
    pareto = pd.read_csv(run / "pareto.csv")
    assert heldout["trial"].tolist() == ["baseline", *map(str, pareto["trial"])]
    assert heldout.loc[0, "heldout_kl"] == pytest.approx(0, abs=1e-6) and (heldout["heldout_n"] == 3).all()
    assert heldout["val_kl"].iloc[1:].tolist() == pytest.approx(pareto["kl"].tolist())
    per_context = pd.read_csv(run / "heldout-contexts.csv")  # 6 contexts × 2 request sets per trial
    assert len(per_context) == 12 * len(heldout) and (per_context["n"] == 3).all()
    assert set(per_context["context"]) == {"default", "none", "helpful", "persona", "terse", "two-turn"}
    assert set(per_context["set"]) == {"advbench", "harmbench"}
    for row in heldout.itertuples():
        rows = per_context[per_context["trial"].astype(str) == row.trial]
        first = rows[(rows["context"] == "default") & (rows["set"] == "advbench")].iloc[0]
        assert (first["refusals"], first["kl"]) == (row.heldout_refusals, pytest.approx(row.heldout_kl))
        assert row.worst_refusals == rows["refusals"].max() and row.worst_kl == pytest.approx(rows["kl"].max())
    out = tmp_path / "model"
    done = subprocess.run([str(bin_dir / "refusal-lab"), "abliterate", "--run", str(run), "--out", str(out),
                           "--max-kl", "100", "--dtype", "float32"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert (out / "reproduce.json").exists() and (out / "config.json").exists()
    capability = pd.read_csv(run / "capability.csv")  # the exported trial against the base, printed by optimize
    assert "capability of the trial" in done_optimize.stdout
    assert sorted(zip(capability["metric"], capability["dataset"], capability["n"])) == [
        ("arc", "arc", 3), ("mmlu", "mmlu", 4), ("perplexity", "instructions", 2), ("perplexity", "lambada", 2)]
    reproduce = json.loads((out / "reproduce.json").read_text())
    assert capability["trial"].unique().tolist() == [reproduce["trial"]] and "worst chat context" in \
        reproduce["chosen_by"] and "llm judge" in reproduce["chosen_by"]
    judged = pd.read_csv(run / "compliance.csv")  # the llm judge on the baseline and two Pareto trials, per context
    assert len(judged) == 2 * (1 + min(2, len(pareto))) and "covert" in done_optimize.stderr
    assert "noncompliant_rate" in done_optimize.stdout
    assert str(reproduce["trial"]) in judged["trial"].astype(str).tolist()
    held = pd.read_csv(run / "heldout-compliance.csv")  # the export and the baseline, 6 contexts × 2 sets, 2 each
    assert sorted(set(held["trial"].astype(str))) == sorted({"baseline", str(reproduce["trial"])})
    assert len(held) == 2 * 6 * 2 and (held["n"] == 2).all() and set(held["set"]) == {"advbench", "harmbench"}
    assert [row["edited"] for row in reproduce["capability"]] == pytest.approx(capability["edited"].tolist())
    bad = subprocess.run([str(bin_dir / "refusal-lab"), "abliterate", "--run", str(run), "--out",
                          str(tmp_path / "m2"), "--max-kl", "0.0000001"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert bad.returncode == 1 and "no Pareto trial" in bad.stderr and "Traceback" not in bad.stderr


def test_survivors_take_the_two_lists_in_turn_within_a_limit():
    from refusal_lab.pipeline.optimize import survivors

    # within KL ≤ 0.1 by p_R: 3, 1, 2; the first-token front within 0.2 by KL: 4 (0.0), 2 (0.05), 1 (0.09), 5 (0.15)
    table = pd.DataFrame({"trial": [1, 2, 3, 4, 5, 6], "kl": [0.09, 0.05, 0.1, 0.0, 0.15, 0.3],
                          "p_refusal": [0.2, 0.4, 0.1, 0.9, 0.05, 0.01], "params": [None] * 6})
    config = _config(max_kl=0.1, survivors=3)
    assert survivors(table, config)["trial"].tolist() == [3, 4, 1, 2]  # within: 3, 1, 2; front: 4, 2, 1
    assert survivors(table, config, limit=3)["trial"].tolist() == [3, 4, 1]
    assert survivors(table, config.model_copy(update={"survivors": 5}), limit=5)["trial"].tolist() == [3, 4, 1, 2, 5]


def test_a_spent_time_budget_generates_only_the_first_survivor(searched, tmp_path, monkeypatch):
    import shutil

    from refusal_lab.pipeline.optimize import optimize

    lm, run, _ = searched
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "evaluation")  # no generation stored
    monkeypatch.setenv("REFUSAL_LAB_CACHE", str(tmp_path / "cache"))
    pareto = optimize(lm, _config(time_budget_min=0.001), copy)  # resumed: every trial done, the budget spent
    assert json.loads((copy / "search.json").read_text())["generated"] == 1 and len(pareto) == 1
    store = ResultsStore(copy / "evaluation")
    generated = store.db.execute("SELECT count(DISTINCT intervention_hash) FROM generations").fetchone()[0]
    store.close()
    assert generated == 2  # the baseline and the one survivor


def test_trials_carry_the_kl_constraint(searched):
    lm, run, _ = searched
    for trial in _study(run).get_trials(states=[optuna.trial.TrialState.COMPLETE]):
        assert trial.constraints == {"kl": pytest.approx(trial.values[1] - 10.0)}  # max_kl 10 in _config


def test_the_heldout_rule_guards_an_optimize_run(tmp_path):
    from refusal_lab.core.errors import RefusalLabError
    from refusal_lab.data import heldout_advbench
    from refusal_lab.pipeline.heldout import eval_prompts
    from refusal_lab.pipeline.heldout import record_seen

    harmful, harmless = eval_prompts(None, "generic", 5, tmp_path)  # a run with no splits and nothing seen yet
    assert len(harmful) == len(harmless) == 5
    record_seen(tmp_path, "optimize", [heldout_advbench().texts[2]])
    with pytest.raises(RefusalLabError, match="1 of the 5 harmful evaluation prompts"):
        eval_prompts(None, "generic", 5, tmp_path)


def test_export_only_reads_the_run(searched, tmp_path):
    import shutil

    from refusal_lab.pipeline.export import trial_ablation

    lm, run, pareto = searched
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    running = _study(copy).ask()  # a search still in flight
    ablation = trial_ablation(lm, copy, int(pareto.iloc[0]["trial"]))
    assert ablation.meta["trial"] == int(pareto.iloc[0]["trial"])
    from refusal_lab.pipeline.optimize import load_study

    assert load_study(copy).trials[running.number].state == optuna.trial.TrialState.RUNNING


def test_front_keeps_the_rows_no_other_row_dominates():
    from refusal_lab.pipeline.optimize import front

    # by hand: b ≤ c in every column (c dropped); d equals a (the later duplicate dropped); e is dominated by a
    table = pd.DataFrame({"name": list("abcdef"), "x": [1, 2, 2, 1, 3, 0], "y": [5, 1, 3, 5, 6, 9],
                          "z": [1.0, 2.0, 2.0, 1.0, 1.0, 3.0]})
    assert sorted(front(table, "x", "y", "z")["name"]) == ["a", "b", "f"]
    assert sorted(front(table, "x", "y")["name"]) == ["a", "b", "f"]
    table.loc[2, "z"] = 0.5  # c now has the lowest z: no longer dominated in three columns, still in two
    assert sorted(front(table, "x", "y", "z")["name"]) == ["a", "b", "c", "f"]
    assert sorted(front(table, "x", "y")["name"]) == ["a", "b", "f"]


def _nll_by_hand(model, tokenizer, texts, window):
    """Token-averaged NLL over disjoint windows of ``window`` tokens, each scoring the tokens after its first."""
    total, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        for begin in range(0, len(ids), window):
            chunk = torch.tensor(ids[begin : begin + window])
            if len(chunk) < 2:
                continue
            logp = torch.log_softmax(model(input_ids=chunk[None]).logits[0].double(), -1)
            total -= float(logp[:-1].gather(-1, chunk[1:, None]).sum())
            count += len(chunk) - 1
    return total / count


def test_the_capability_objective_is_the_edits_nll_on_raw_text(tmp_path, monkeypatch):
    from refusal_lab.evaluation.texts import load_texts
    from refusal_lab.pipeline.export import trial_ablation
    from refusal_lab.pipeline.optimize import load_study, optimize

    monkeypatch.setenv("REFUSAL_LAB_CACHE", str(tmp_path / "cache"))
    config = _config(trials=8, capability_texts=3, capability_window=16)
    pareto = optimize(tiny_model("qwen2"), config, tmp_path / "run")
    texts = load_texts("lambada", 3, 0)[1]
    reference = tiny_model("qwen2")
    with torch.no_grad():
        base = _nll_by_hand(reference.model, reference.tokenizer, texts, 16)
        assert json.loads((tmp_path / "run" / "search.json").read_text())["baseline_nll"] == pytest.approx(base,
                                                                                                           rel=1e-4)
        study = load_study(tmp_path / "run")
        assert len(study.directions) == 3 and {"nll", "nll_change"} <= set(pareto.columns)
        for row in pareto.head(2).itertuples():
            edited = tiny_model("qwen2")
            trial_ablation(edited, tmp_path / "run", row.trial).apply_to_weights(edited)
            nll = _nll_by_hand(edited.model, edited.tokenizer, texts, 16)
            assert row.nll == pytest.approx(nll, rel=1e-4) and row.nll_change == pytest.approx(nll - base, rel=1e-3)
            assert study.trials[row.trial].values[2] == pytest.approx(nll, rel=1e-4)
    assert abs(pareto["nll_change"]).max() > 1e-3  # the edits move it


# --- the norm-preserving ("biprojected") edit ---------------------------------------------------------------

def _row_renormalised_by_hand(W, r, w):
    """heretic's row_normalization = "full", literally: normalise the rows, ablate, renormalise, restore the norms."""
    norms = W.norm(dim=1, keepdim=True)
    normalized = W / norms
    edited = normalized - w * torch.outer(r, r @ normalized)
    return edited / edited.norm(dim=1, keepdim=True) * norms


def test_norm_preserving_write_map_is_the_row_renormalised_weight_edit():
    from refusal_lab.search.edit import RowNormalizedAblation, row_norm_scales

    g = torch.Generator().manual_seed(0)
    W, b, x = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((6, 9), (6,), (4, 9)))
    r = torch.randn(6, generator=g, dtype=torch.float64)
    r /= r.norm()
    for w in (0.0, 0.7, 1.0, 1.4):
        expected = _row_renormalised_by_hand(W, r, w)
        assert torch.allclose(expected.norm(dim=1), W.norm(dim=1))  # what "norm-preserving" preserves
        s_in, s_out = row_norm_scales(W, r, w)
        mapped = RowNormalizedAblation(r.float(), w, s_in.float(), s_out.float(), b.float())((x @ W.T + b).float())
        assert torch.allclose(mapped.double(), x @ expected.T + b, atol=1e-5)  # bias kept, weights edited
    assert not torch.allclose(_row_renormalised_by_hand(W, r, 1.0), W - torch.outer(r, r @ W), atol=1e-2)


def test_norm_preserving_hooks_weights_and_batched_scores_agree(tmp_path):
    from refusal_lab.pipeline.export import lora_adapter

    lm = tiny_model("qwen2")
    plain, ablation = _ablation(lm), _ablation(lm)
    ablation.norm_preserving = True
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with pytest.raises(Exception, match="needs the model"):
        ablation.interventions()
    with apply_interventions(lm, ablation.interventions(lm=lm)):
        hooked = lm.model(input_ids=ids).logits
    with apply_interventions(lm, plain.interventions()):
        hooked_plain = lm.model(input_ids=ids).logits
    base = last_token_logprobs(lm, PROMPTS)
    scores, kl = batched_scores(lm, PROMPTS, [a.interventions(dense=True, lm=lm) for a in (ablation, plain)], base)
    with apply_interventions(lm, ablation.interventions(lm=lm)):
        one = last_token_logprobs(lm, PROMPTS)
    assert torch.allclose(scores[0], refusal_scores(one, lm.refusal_token_ids), atol=1e-4)
    assert torch.allclose(kl[0], (base.exp() * (base - one)).sum(-1), atol=1e-5)
    with pytest.raises(Exception, match="no exact LoRA form"):
        lora_adapter(lm, ablation, tmp_path / "lora")
    mlp = lm.adapter.mlp_out_proj(lm.adapter.layers(lm.model)[1])
    W = mlp.weight.detach().clone().double()
    ablation.apply_to_weights(lm)
    assert torch.allclose(mlp.weight.double(), _row_renormalised_by_hand(W, ablation.directions[1].double(), 1.0),
                          atol=1e-5)
    edited = lm.model(input_ids=ids).logits
    assert torch.allclose(edited, hooked, atol=1e-4) and not torch.allclose(edited, hooked_plain, atol=1e-3)
    loaded = Abliteration.load(ablation.save(tmp_path / "a"))
    assert loaded.norm_preserving and loaded.meta == {"model": lm.name}


def test_search_over_both_edits_exports_the_norm_preserving_trials_it_scored(tmp_path, monkeypatch):
    from refusal_lab.pipeline.export import export_trial
    from refusal_lab.pipeline.optimize import load_study, optimize, trial_params

    monkeypatch.setenv("REFUSAL_LAB_CACHE", str(tmp_path / "cache"))
    optimize(tiny_model("qwen2"), _config(trials=8, norm_preserving=[False, True]), tmp_path / "run")
    trials = load_study(tmp_path / "run").get_trials(states=[optuna.trial.TrialState.COMPLETE])
    kinds = {t.number: trial_params(t).norm_preserving for t in trials}
    assert set(kinds.values()) == {False, True}
    number = next(n for n, kind in kinds.items() if kind)
    out = export_trial(tiny_model("qwen2"), tmp_path / "run", tmp_path / "model", trial=number)
    from transformers import AutoModelForCausalLM

    from refusal_lab.data import dataset_splits
    from refusal_lab.models import wrap_model

    lm = tiny_model("qwen2")
    edited = wrap_model(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32), lm.tokenizer, "edited")
    harmless = dataset_splits("unmatched", n_train=8, n_val=6).val_harmless.texts
    base = last_token_logprobs(lm, harmless)
    kl = (base.exp() * (base - last_token_logprobs(edited, harmless))).sum(-1).mean()
    assert float(kl) == pytest.approx(trials[number].values[1], abs=1e-4)
    assert json.loads((out / "abliteration.json").read_text())["norm_preserving"] is True


def test_heretic_trials_rebuild_as_heretic_defines_them(monkeypatch):
    """benchmarks/bench_optimize.py scores heretic's trials held out as refusal-lab edits: heretic 1.4.0's kernel
    (min_weight sampled as a fraction of max_weight), its direction (embeddings = stream 0, so its index x reads
    resid_pre ⌊x⌋+1 and ⌊x⌋+2; orthogonalised against the harmless mean) and its default norm-preserving edit."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    from bench_optimize import heretic_params

    trial = {"direction_scope": "global", "direction_index": 1.25}
    for module, (top, position, fraction, distance) in (("attn.o_proj", (1.2, 2.0, 0.5, 1.5)),
                                                        ("mlp.down_proj", (0.9, 3.0, 0.25, 2.0))):
        trial |= {f"{module}.max_weight": top, f"{module}.max_weight_position": position,
                  f"{module}.min_weight": fraction, f"{module}.min_weight_distance": distance}
    params = heretic_params(trial)
    # heretic: weight = max + (d / distance)·(min − max) for d = |l − position| ≤ distance, else 0; min = fraction·max
    attn = [0.0, 1.2 + (1 / 1.5) * (0.6 - 1.2), 1.2, 1.2 + (1 / 1.5) * (0.6 - 1.2)]
    assert torch.allclose(params.attn.weights(4), torch.tensor(attn), atol=1e-6)
    assert params.mlp.weights(5)[1].item() == pytest.approx(0.9 + 1.0 * (0.225 - 0.9))
    assert params.norm_preserving and params.orthogonalize
    harmful, harmless = _means(L=5)
    v = (harmful - harmless)[:, -1]
    v = v / v.norm(dim=-1, keepdim=True)
    g = harmless[:, -1] / harmless[:, -1].norm(dim=-1, keepdim=True)
    v = v - (v * g).sum(-1, keepdim=True) * g
    v = v / v.norm(dim=-1, keepdim=True)
    expected = torch.lerp(v[2], v[3], 0.25)
    r = layer_directions(harmful - harmless, harmless, params, n_layers=5)
    assert torch.allclose(r[0].double(), expected / expected.norm(), atol=1e-6)


def test_capability_check_scores_the_export_and_the_base_on_the_same_items(searched, tmp_path, monkeypatch):
    """An edit that changes nothing (every weight 0) scores exactly the base on every measure; the real trial's
    rows pair the two on the same seeded questions and texts."""
    import shutil

    import refusal_lab.pipeline.trial_capability as capability
    from refusal_lab.pipeline.search_data import CapabilityCheck

    lm, run, pareto = searched
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = _config(capability_check=CapabilityCheck(mmlu_n=4, arc_n=3, text_docs=2, n_instructions=2))
    real = capability.trial_capability(lm, copy, config)
    assert len(real) == 4 and set(real["trial"]) == {int(pareto.sort_values(["refusal_rate", "p_refusal"]).iloc[0]
                                                          ["trial"])}
    multiple_choice = real[real["metric"] != "perplexity"]
    assert (multiple_choice["difference"] == multiple_choice["edited"] - multiple_choice["base"]).all()

    rebuilt = capability.trial_ablation

    def unchanged(lm, run_dir, trial):
        edit = rebuilt(lm, run_dir, trial)
        return Abliteration(edit.directions, {k: torch.zeros_like(w) for k, w in edit.weights.items()}, edit.meta)

    monkeypatch.setattr(capability, "trial_ablation", unchanged)
    shutil.rmtree(copy / "capability")
    same = capability.trial_capability(lm, copy, config)
    assert same["edited"].tolist() == pytest.approx(same["base"].tolist(), rel=1e-6)
    assert same["difference"].tolist() == pytest.approx([0.0] * 4, abs=1e-6)
    assert same["base"].tolist() == pytest.approx(real["base"].tolist())  # the same base, stored once per store
