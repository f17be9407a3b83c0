"""Held-out scores of an ``optimize`` run's trials, beside the validation scores the search chose them by.

Harmful: the fixed held-out AdvBench slice; harmless: the fixed held-out generic requests
(:mod:`refusal_lab.data.sources`) through :func:`refusal_lab.pipeline.comparison.eval_prompts`, so the same
held-out rule
checks them against every prompt the search saw (``RUN_DIR/seen``). Refusals:
greedy completions of ``max_new_tokens`` judged by the run's judge (heretic's markers by default); KL: mean
first-token ``KL(p_base ‖ p_trial)`` on the harmless requests, as in the search.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from refusal_lab.evaluation.generate import generate
from refusal_lab.pipeline.judging import make_judge
from refusal_lab.interventions.scoring import kl_divergence, last_token_logprobs
from refusal_lab.pipeline.comparison import eval_prompts
from refusal_lab.pipeline.export import trial_ablation
from refusal_lab.pipeline.optimize import OptimizeConfig
from refusal_lab.search.edit import Abliteration


def heldout_scores(lm, ablation: Abliteration | None, harmful: list[str], harmless: list[str], base_logprobs,
                   config: OptimizeConfig, judge) -> dict:
    """``{"refusals", "n", "kl"}`` of one edit (None: the unmodified model) on the held-out requests."""
    interventions = ablation.interventions(lm=lm) if ablation is not None else []
    completions = generate(lm, harmful, interventions, config.max_new_tokens, config.generate_batch,
                           description="held-out generations")
    kl = kl_divergence(base_logprobs, last_token_logprobs(lm, harmless, interventions, config.rows_per_pass))
    return {"refusals": sum(judge.refuses(c) for c in completions), "n": len(harmful), "kl": float(kl.mean())}


def assess_front(lm, run_dir: str | Path, n: int = 100, trials: list[int] | None = None) -> pd.DataFrame:
    """The Pareto trials (or ``trials``) with their validation and held-out refusals and KL; first row: baseline."""
    run_dir = Path(run_dir)
    config = OptimizeConfig.model_validate(json.loads((run_dir / "config.json").read_text()))
    judge = make_judge(config.judge)
    pareto = pd.read_csv(run_dir / "pareto.csv")
    trials = trials if trials is not None else pareto["trial"].tolist()
    harmful, harmless = eval_prompts(None, "generic", n, run_dir)  # checked against RUN_DIR/seen
    base = last_token_logprobs(lm, harmless, batch_size=config.rows_per_pass)
    search = json.loads((run_dir / "search.json").read_text())
    rows = [{"trial": "baseline", "val_refusals": search["baseline_refusals"], "val_n": search["n"], "val_kl": 0.0,
             **{f"heldout_{k}": v for k, v in heldout_scores(lm, None, harmful, harmless, base, config,
                                                             judge).items()}}]
    for trial in trials:
        scored = pareto[pareto["trial"] == trial]
        validation = scored.iloc[0] if not scored.empty else {"refusals": None, "n": None, "kl": None}
        held = heldout_scores(lm, trial_ablation(lm, run_dir, trial), harmful, harmless, base, config, judge)
        rows.append({"trial": str(trial), "val_refusals": validation["refusals"], "val_n": validation["n"],
                     "val_kl": validation["kl"], **{f"heldout_{k}": v for k, v in held.items()}})
    return pd.DataFrame(rows)
