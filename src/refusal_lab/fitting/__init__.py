"""Fitting directions and subspaces from activations (torch only, model-agnostic): DiM, INLP (+ its probe and
orders), classifier weights, LEACE, multi-layer subspaces."""
