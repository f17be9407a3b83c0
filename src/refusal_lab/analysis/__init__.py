"""Analyses of extracted directions (how they depend on data and extraction settings)."""

from refusal_lab.analysis.sensitivity import (
    batching_sensitivity,
    compare_candidates,
    splits_sensitivity,
    train_candidates,
)

__all__ = ["batching_sensitivity", "compare_candidates", "splits_sensitivity", "train_candidates"]
