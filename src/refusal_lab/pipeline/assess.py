"""Held-out scores of an ``optimize`` run's trials, beside the validation scores the search chose them by.

Harmful: the fixed held-out AdvBench slice; harmless: the fixed held-out generic requests
(:mod:`refusal_lab.data.sources`) through :func:`refusal_lab.pipeline.heldout.eval_prompts`, so the same held-out
rule checks them against every prompt the search saw (``RUN_DIR/seen``). Scored by the one evaluator
(:class:`~refusal_lab.pipeline.edit_scoring.EditScorer`, store ``RUN_DIR/heldout/``): refusals among greedy
completions of ``max_new_tokens`` judged by the run's judge (heretic's markers by default); KL: mean first-token
``KL(p_base ‖ p_trial)`` on the harmless requests, as in the search.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from refusal_lab.pipeline.edit_scoring import EditScorer
from refusal_lab.pipeline.export import trial_ablation
from refusal_lab.pipeline.heldout import eval_prompts
from refusal_lab.pipeline.judging import make_judge
from refusal_lab.pipeline.search_data import OptimizeConfig


def heldout_scorer(lm, run_dir: str | Path, config: OptimizeConfig, n: int = 100) -> EditScorer:
    """An :class:`EditScorer` on the first ``n`` held-out requests per side, checked against ``RUN_DIR/seen``."""
    harmful, harmless = eval_prompts(None, "generic", n, run_dir)
    return EditScorer(lm, Path(run_dir) / "heldout", harmful, harmless, make_judge(config.judge),
                      config.max_new_tokens, config.generate_batch)


def assess_front(lm, run_dir: str | Path, n: int = 100, trials: list[int] | None = None) -> pd.DataFrame:
    """The Pareto trials (or ``trials``) with their validation and held-out refusals and KL; first row: baseline."""
    run_dir = Path(run_dir)
    config = OptimizeConfig.model_validate(json.loads((run_dir / "config.json").read_text()))
    pareto = pd.read_csv(run_dir / "pareto.csv")
    trials = trials if trials is not None else pareto["trial"].tolist()
    search = json.loads((run_dir / "search.json").read_text())
    with heldout_scorer(lm, run_dir, config, n) as scorer:
        rows = [{"trial": "baseline", "val_refusals": search["baseline_refusals"], "val_n": search["n"],
                 "val_kl": 0.0, **{f"heldout_{k}": v for k, v in scorer.score("baseline", None).items()}}]
        for trial in trials:
            scored = pareto[pareto["trial"] == trial]
            validation = scored.iloc[0] if not scored.empty else {"refusals": None, "n": None, "kl": None}
            held = scorer.score(f"trial-{trial}", trial_ablation(lm, run_dir, trial), trial=trial)
            rows.append({"trial": str(trial), "val_refusals": validation["refusals"], "val_n": validation["n"],
                         "val_kl": validation["kl"], **{f"heldout_{k}": v for k, v in held.items()}})
    return pd.DataFrame(rows)
