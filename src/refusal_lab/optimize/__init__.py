"""Automatic abliteration: a refusal × KL Pareto search (``optimize``) and the export of one trial."""
