"""Maps on the residual stream (projections, additions, affine erasers), the hooks that place them at sites and
scopes, the kind → hooks factory, weight orthogonalization, and forward passes under interventions (scoring)."""

from refusal_lab.interventions.base import Addition, Projection, Transform
from refusal_lab.interventions.hooks import Intervention, apply_interventions, scope_layers
from refusal_lab.interventions.weights import orthogonalize_weights

__all__ = ["Addition", "Projection", "Transform", "Intervention", "apply_interventions", "scope_layers",
           "orthogonalize_weights"]
