"""Scoring abliteration edits (the unedited model, an optimize trial, an export) with the one evaluator.

Refusals: greedy completions of ``max_new_tokens`` on the harmful prompts, judged by a phrase judge (heretic's
markers by default), the suite's ``refusal`` metric; KL: the mean first-token ``KL(p_base ‖ p_edit)`` on the harmless
prompts, its ``kl`` metric (no harmless prompts: no KL). Per-item values and generations live in the suite's store
under ``directory``, so a rerun generates nothing already generated. Prompts are formatted in ``lm``'s chat context
(:meth:`~refusal_lab.models.load.LoadedModel.in_context`), which the store's keys include, so scorers of several
contexts can share one store (``store=``).
"""

from __future__ import annotations

from pathlib import Path

from refusal_lab.evaluation.condition import Condition
from refusal_lab.evaluation.store import ResultsStore
from refusal_lab.evaluation.suite import Suite
from refusal_lab.search.edit import Abliteration

BASELINE = Condition("baseline")


class EditScorer:
    """Refusals and KL of edits on fixed prompts (see the module docstring); use as a context manager."""

    def __init__(self, lm, directory: str | Path | None, harmful: list[str], harmless: list[str], judge,
                 max_new_tokens: int, batch_size: int, store: ResultsStore | None = None):
        self.lm = lm
        self.owns_store = store is None  # a shared store is closed by whoever opened it
        self.store = ResultsStore(directory) if store is None else store
        self.n = len(harmful)
        self.suite = Suite(lm, self.store, harmful, harmless, metrics=["refusal"] + (["kl"] if harmless else []),
                           judges=[judge], lengths=[max_new_tokens], batch_size=batch_size)

    def __enter__(self) -> EditScorer:
        return self

    def __exit__(self, *exc) -> None:
        if self.owns_store:
            self.store.close()

    def score(self, name: str, ablation: Abliteration | None, **params) -> dict:
        """``{"refusals", "n"[, "kl"]}`` of one edit (None: the unmodified model) named ``name``."""
        condition = BASELINE if ablation is None else Condition(
            name, ablation.interventions(lm=self.lm), "ablate", "all", "optimize", params=params)
        rows, _ = self.suite.run([BASELINE] if ablation is None else [BASELINE, condition])
        scored = {r["metric"]: r for r in rows if r["intervention"] == condition.name}
        result = {"refusals": round(scored["refusal"]["value"] * scored["refusal"]["n"]), "n": self.n}
        return result | ({"kl": scored["kl"]["value"]} if "kl" in scored else {})


class ScorerSet:
    """:class:`EditScorer` s over one store in ``directory``, one per key of ``parts`` (key → the model viewed in
    its chat context, harmful prompts, harmless prompts); use as a context manager."""

    def __init__(self, directory: str | Path, parts: dict, judge, max_new_tokens: int, batch_size: int):
        self.store = ResultsStore(directory)
        self.scorers = {key: EditScorer(lm, None, harmful, harmless, judge, max_new_tokens, batch_size,
                                        store=self.store) for key, (lm, harmful, harmless) in parts.items()}

    def __enter__(self) -> ScorerSet:
        return self

    def __exit__(self, *exc) -> None:
        self.store.close()

    def score(self, name: str, ablation: Abliteration | None, **params) -> dict:
        """key → :meth:`EditScorer.score` of one edit (None: the unmodified model)."""
        return {key: scorer.score(name, ablation, **params) for key, scorer in self.scorers.items()}


__all__ = ["EditScorer", "ScorerSet"]
