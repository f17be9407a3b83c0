"""Interventions: maps on residual activations, hooks that place them in a model, and permanent weight edits."""

from refusal_lab.interventions.base import Addition, Projection, Transform
from refusal_lab.interventions.hooks import (FLIP_VARIANTS, PLACEMENTS, SCOPES, SITES, Intervention,
                                             apply_interventions, scope_layers)
from refusal_lab.interventions.weights import orthogonalize_weights

__all__ = ["Addition", "Projection", "Transform", "FLIP_VARIANTS", "PLACEMENTS", "SCOPES", "SITES", "Intervention",
           "apply_interventions", "scope_layers", "orthogonalize_weights"]
