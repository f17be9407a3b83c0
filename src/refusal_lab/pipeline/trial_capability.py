"""What an ``optimize`` export costs in capability: the default trial (:func:`~refusal_lab.pipeline.export.choose_trial`)
against the unedited model, scored by the one evaluator on seeded subsets (``RUN_DIR/capability/``, resumable).

Measures (:class:`~refusal_lab.pipeline.search_data.CapabilityCheck` sizes): MMLU 5-shot accuracy on ``mmlu_n``
questions stratified by subject and ARC-Challenge accuracy on ``arc_n`` (both drawn with the search's seed),
perplexity of ``text_docs`` LAMBADA documents and of the unedited model's own greedy answers to ``n_instructions``
held-out generic requests (``instructions``: the same ``max_new_tokens`` as the search), each with its 95 %
interval and the paired difference to the base (relative for perplexity). Written to ``RUN_DIR/capability.csv``
and, for that trial, into the export's ``reproduce.json``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from refusal_lab.evaluation.condition import Condition
from refusal_lab.evaluation.multiple_choice import load_arc, load_mmlu
from refusal_lab.evaluation.store import ResultsStore
from refusal_lab.evaluation.suite import Suite
from refusal_lab.evaluation.texts import load_texts
from refusal_lab.pipeline.edit_scoring import BASELINE
from refusal_lab.pipeline.export import choose_trial, trial_ablation
from refusal_lab.pipeline.heldout import eval_prompts
from refusal_lab.pipeline.search_data import OptimizeConfig

COLUMNS = ["trial", "metric", "dataset", "n", "base", "base_ci_low", "base_ci_high", "edited", "edited_ci_low",
           "edited_ci_high", "difference", "difference_ci_low", "difference_ci_high"]


def trial_capability(lm, run_dir: str | Path, config: OptimizeConfig, trial: int | None = None,
                     max_kl: float | None = None) -> pd.DataFrame:
    """One row per measure (module docstring) for ``trial`` (default: the trial ``abliterate`` exports within
    ``max_kl``, default ``config.max_kl``); ``difference`` is edited − base (relative for perplexity)."""
    run_dir, check = Path(run_dir), config.capability_check
    trial, _ = choose_trial(run_dir, trial, config.max_kl if max_kl is None else max_kl)
    harmless = eval_prompts(None, "advbench", check.n_instructions, run_dir)[1]  # held-out, checked unseen
    texts = {"lambada": load_texts("lambada", check.text_docs, config.seed)[1]}
    questions = {"mmlu": load_mmlu(n=check.mmlu_n, seed=config.seed), "arc": load_arc(n=check.arc_n, seed=config.seed)}
    edited = Condition(f"trial-{trial}", trial_ablation(lm, run_dir, trial).interventions(lm=lm), "ablate", "all",
                       "optimize", params={"trial": trial})
    store = ResultsStore(run_dir / "capability")
    try:
        suite = Suite(lm, store, [], harmless, metrics=["perplexity", "mmlu", "arc"], lengths=[config.max_new_tokens],
                      texts=texts, questions=questions, batch_size=config.generate_batch)
        rows, _ = suite.run([BASELINE, edited])
    finally:
        store.close()
    found = [{"trial": trial, "metric": r["metric"], "dataset": r["dataset"], "n": r["n"],
              "base": r["baseline"], "base_ci_low": r["baseline_ci_low"], "base_ci_high": r["baseline_ci_high"],
              "edited": r["value"], "edited_ci_low": r["ci_low"], "edited_ci_high": r["ci_high"],
              "difference": r["difference"], "difference_ci_low": r["difference_ci_low"],
              "difference_ci_high": r["difference_ci_high"]} for r in rows if r["intervention"] == edited.name]
    return pd.DataFrame(found, columns=COLUMNS)


__all__ = ["trial_capability"]
