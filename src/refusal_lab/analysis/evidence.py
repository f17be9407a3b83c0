"""What a study measured on one model, in the tables the figures, the findings and the report read.

Intervention names are the comparison's (:func:`refusal_lab.pipeline.conditions.plan_conditions`), e.g. ``ablate[all]``,
``actadd[layer,scale=-1]`` (bypass) / ``actadd[layer,scale=1]`` (induce), ``nullspace[layer]``,
``flip[layer,alpha=2,flip_variant=input]``, ``rank-k[layer,k=3,order=iteration]``, ``leace[layer]``,
``subspace[all,k=3]``, ``classifier-actadd[layer,scale=-1]``; ``baseline`` is the unmodified model; controls end in
``~random<seed>``. ``family`` groups them: DiM (ablate, actadd), INLP (nullspace, flip, rank-k), classifier
(classifier-actadd), LEACE (leace), subspace (subspace).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

FAMILY = {"none": "baseline", "ablate": "DiM", "actadd": "DiM", "nullspace": "INLP", "flip": "INLP",
          "rank-k": "INLP", "classifier-actadd": "classifier", "leace": "LEACE", "subspace": "subspace"}
FAMILIES = ("DiM", "INLP", "classifier", "LEACE", "subspace")


@dataclass
class ModelEvidence:
    """One model's study results.

    ``results``: the evaluation rows (:data:`refusal_lab.evaluation.store.RESULT_COLUMNS`: intervention, kind, scope,
    goal, control, control_for, metric, judge, dataset, max_new_tokens, n, value, ci_low, ci_high, baseline,
    baseline_ci_low/high, difference(+_ci_low/high) = value − baseline (relative for perplexity), delta(+_ci_low/high)
    = the signed Δ, higher = better for the row's goal, specific) plus ``family``.
    ``items``: per-item values of every row, columns intervention, metric, judge, dataset, max_new_tokens, item,
    value, tokens (perplexity: value = document NLL sum, tokens = its token count; else tokens NaN); the same items
    on every intervention, so two interventions pair by ``item`` (:func:`refusal_lab.evaluation.stats.difference`).
    ``heatmaps``: ``"dim"`` / ``"inlp"`` → ``[L, L]`` cosines between the per-layer DiM directions (first INLP
    directions) at ``position``. ``inlp_dim_cosine``: layer, cosine (first INLP direction vs DiM, per layer).
    ``geometry``: per layer (resid_pre at ``position``, validation activations): layer, cos_means, norm_harmful_mean,
    norm_harmless_mean, norm_refusal, silhouette, probe_accuracy. ``landing``: per intervention (transformed harmful
    validation activations at ``landing_layer``): intervention, kind, family, fraction, fraction_ci_low,
    fraction_ci_high, nearer_harmless, silhouette. ``frames``: intervention → ``{"harmful", "harmless"}`` 2-D
    coordinates ``[n, 2]`` on the fixed frame (DiM direction × first orthogonal principal component; ``baseline``
    = before), and ``{"harmful_pca", "harmless_pca"}`` on the clean activations' top two principal axes. ``sensitivity``: layer, batched_vs_single, matched_vs_unmatched (cosines at ``position``).
    """

    model: str
    n_layers: int
    layer: int  # DiM's chosen layer
    position: int  # DiM's chosen post-instruction position (negative)
    landing_layer: int
    results: pd.DataFrame
    items: pd.DataFrame
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)
    inlp_dim_cosine: pd.DataFrame = field(default_factory=pd.DataFrame)
    geometry: pd.DataFrame = field(default_factory=pd.DataFrame)
    landing: pd.DataFrame = field(default_factory=pd.DataFrame)
    frames: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    sensitivity: pd.DataFrame = field(default_factory=pd.DataFrame)


__all__ = ["FAMILIES", "FAMILY", "ModelEvidence"]
