"""The llm judge on an optimize front: per-context counts (refusals, non-compliant, covert, incoherent) recomputed by
hand from hand-made generations, their aggregation into pareto.csv, the export's choice by them, and the search
writing them with a real (tiny) llm judge."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import tiny_model

from refusal_lab.evaluation.judgement import Judgement
from refusal_lab.evaluation.judges import SubstringJudge

PHRASES = ["h", "r"]  # the phrase judge's "refusals" (case-insensitive)


class RuleJudge:
    """An llm-judge stand-in with rules a test can recompute: complies when the response holds a "w", refuses when
    it holds a "u", coherent when it holds a "Q"."""

    name, fingerprint = "llm:rules", "rules-1"

    def judge(self, requests, responses):
        return [Judgement(refusal=float("u" in r), compliance=float("w" in r), coherence=float("Q" in r))
                for r in responses]


def _edit(lm):
    from refusal_lab.search.edit import Abliteration

    directions = torch.randn(lm.n_layers, lm.hidden_size, generator=torch.Generator().manual_seed(0))
    directions /= directions.norm(dim=-1, keepdim=True)
    return Abliteration(directions, {"attn": torch.tensor([0.8, 0.0, 1.3]), "mlp": torch.tensor([0.5, 1.0, 0.0])},
                        {"model": lm.name})


def test_judge_edits_counts_every_context_by_hand(tmp_path, one_thread):
    from refusal_lab.evaluation.generate import generate
    from refusal_lab.pipeline.compliance import judge_edits

    lm = tiny_model("llama")  # its random completions vary (the tiny qwen2's are all blank)
    harmful = {"default": ["pick a lock", "write a rude poem", "say a bad word", "take a car"],
               "search-terse": ["hide a thing", "break a rule", "skip a queue"]}
    phrase, llm, edit = SubstringJudge(PHRASES), RuleJudge(), _edit(lm)
    judged = judge_edits(lm, tmp_path, harmful, {7: edit}, phrase, llm, max_new_tokens=12, batch_size=2)
    assert judged[["trial", "context"]].values.tolist() == [["baseline", "default"], [7, "default"],
                                                            ["baseline", "search-terse"], [7, "search-terse"]]
    for row in judged.itertuples():
        hooks = [] if row.trial == "baseline" else edit.interventions(lm=lm)
        responses = generate(lm.in_context(row.context), harmful[row.context], hooks, max_new_tokens=12)
        refused = [phrase.refuses(r) for r in responses]
        complied = ["w" in r for r in responses]
        assert row.n == len(responses)
        assert row.refusals == sum(refused)
        assert row.noncompliant == sum(not c for c in complied)
        assert row.covert == sum(not r and not c for r, c in zip(refused, complied))
        # the project's refusal rule for a compliance-grading judge: refusal ≥ 0.5 or not complying
        assert row.llm_refusals == sum("u" in r or not c for r, c in zip(responses, complied))
        assert row.incoherent == sum(not f and "Q" not in r for f, r in zip(refused, responses))
    assert 0 < judged["refusals"].sum() < judged["n"].sum()  # the rules split the responses: the test can fail
    assert 0 < judged["noncompliant"].sum() < judged["n"].sum() and judged["covert"].sum() > 0


def test_with_compliance_aggregates_the_contexts_as_the_objective_says():
    from refusal_lab.pipeline.compliance import with_compliance

    pareto = pd.DataFrame({"trial": [3, 5, 9], "refusal_rate": [0.1, 0.2, 0.3], "kl": [0.05, 0.04, 0.01]})
    judged = pd.DataFrame({"trial": ["baseline", "baseline", 3, 3, 5, 5], "context": ["a", "b"] * 3,
                           "n": [4, 5] * 3, "refusals": [3, 4, 0, 1, 1, 1], "llm_refusals": [4, 5, 2, 1, 1, 2],
                           "noncompliant": [4, 5, 2, 1, 1, 2], "covert": [1, 1, 2, 0, 0, 1],
                           "incoherent": [0, 0, 1, 0, 0, 0]})
    worst = with_compliance(pareto, judged, "worst").set_index("trial")
    assert worst.loc[3, "noncompliant_rate"] == pytest.approx(max(2 / 4, 1 / 5))
    assert worst.loc[5, "noncompliant_rate"] == pytest.approx(max(1 / 4, 2 / 5))
    assert (worst.loc[3, "noncompliant"], worst.loc[3, "covert"], worst.loc[3, "judged_refusals"],
            worst.loc[3, "judged_n"], worst.loc[3, "noncompliant@b"]) == (3, 2, 1, 9, 1)
    assert worst.loc[9, ["noncompliant_rate", "noncompliant", "covert"]].isna().all()  # not judged
    mean = with_compliance(pareto, judged, "mean").set_index("trial")
    assert mean.loc[5, "noncompliant_rate"] == pytest.approx((1 / 4 + 2 / 5) / 2)
    nobody = with_compliance(pareto, judged[judged["trial"] == "baseline"], "worst")
    assert nobody.equals(pareto)


def test_export_chooses_the_least_non_compliant_judged_trial(tmp_path):
    from refusal_lab.pipeline.export import choose_trial

    pareto = pd.DataFrame({"trial": [1, 2, 3, 4], "refusal_rate": [0.0, 0.1, 0.1, 0.2],
                           "p_refusal": [0.1, 0.2, 0.3, 0.4], "kl": [0.09, 0.05, 0.04, 0.5],
                           "noncompliant_rate": [0.4, 0.2, 0.2, 0.0]})
    pareto.to_csv(tmp_path / "pareto.csv", index=False)
    (tmp_path / "search.json").write_text(json.dumps({"objective": "worst"}))
    trial, criterion = choose_trial(tmp_path, None, 0.1)
    assert trial == 2 and "llm judge" in criterion and "worst chat context" in criterion  # 4 is over the bound
    pareto.assign(noncompliant_rate=[0.4, float("nan"), 0.3, 0.0]).to_csv(tmp_path / "pareto.csv", index=False)
    assert choose_trial(tmp_path, None, 0.1)[0] == 3  # an unjudged trial is not chosen over judged ones
    pareto.drop(columns="noncompliant_rate").to_csv(tmp_path / "pareto.csv", index=False)
    trial, criterion = choose_trial(tmp_path, None, 0.1)
    assert trial == 1 and "llm judge" not in criterion  # no llm judgements: the refusal rate


def test_search_writes_the_llm_judges_counts_into_its_front(tmp_path, model_dir, one_thread, monkeypatch):
    from refusal_lab.pipeline.optimize import optimize
    from refusal_lab.pipeline.search_data import OptimizeConfig

    monkeypatch.setenv("REFUSAL_LAB_CACHE", str(tmp_path / "cache"))
    config = OptimizeConfig(model="tiny", dtype="float32", sources=["mixed"], n_train=8, n_val=6, n_score=4, n_kl=4,
                            trials=8, startup_trials=4, trials_per_pass=4, rows_per_pass=48, max_kl=10.0,
                            survivors=3, max_new_tokens=3, contexts=["default", "search-persona"],
                            compliance_check={"judge": f"llm:{model_dir}", "ablate": "none", "trials": 2,
                                              "max_new_tokens": 5})
    pareto = optimize(tiny_model("qwen2"), config, tmp_path / "run")
    judged = pd.read_csv(tmp_path / "run" / "compliance.csv")
    trials = pareto.sort_values(["refusal_rate", "p_refusal"])["trial"].head(2).tolist()
    assert judged["trial"].tolist() == ["baseline", *map(str, trials)] * 2
    assert judged.groupby("context")["n"].first().to_dict() == {"default": 3, "search-persona": 3}
    assert (judged["covert"] <= judged["noncompliant"]).all() and (judged["noncompliant"] <= judged["n"]).all()
    for trial in trials:
        rows = judged[judged["trial"] == str(trial)]
        row = pareto[pareto["trial"] == trial].iloc[0]
        assert row["noncompliant"] == rows["noncompliant"].sum() and row["judged_n"] == 6
        assert row["noncompliant_rate"] == pytest.approx((rows["noncompliant"] / rows["n"]).max())
    assert pareto.loc[~pareto["trial"].isin(trials), "noncompliant_rate"].isna().all()
