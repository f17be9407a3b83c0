"""Classifier-weight ActAdd direction: the first INLP classifier's weight, rescaled to the DiM norm.

``v_clf = w_1/‖w_1‖ · ‖v_DiM‖`` (``w_1`` fit on unprojected activations, pointing from harmless to harmful), so
``h + k·v_clf`` is comparable to DiM ActAdd ``h + k·v_DiM`` at the same ``k``. The arithmetic lives in
:meth:`INLPResult.first_classifier_direction`; this module pairs it with a DiM direction.
"""

from __future__ import annotations

import dataclasses

from refusal_lab.core.artifacts import Direction
from refusal_lab.fitting.inlp import INLPResult


def classifier_direction(inlp_result: INLPResult, dim_direction: Direction, method: str = "classifier") -> Direction:
    """``w_1/‖w_1‖ · ‖v_DiM‖`` as a :class:`Direction` ``[d]``; provenance copied from the DiM direction
    (same model, layer, position, data) with ``method`` replaced and the INLP settings recorded in ``extra``."""
    provenance = dataclasses.replace(dim_direction.provenance, method=method)
    return inlp_result.first_classifier_direction(provenance, scale_to=dim_direction.norm)
