"""Named row orders for rank-k of an INLP subspace.

``I − P = VᵀV`` is a projector (all singular values 1), so its SVD gives no order; ``P_k = I − V_kᵀ V_k`` needs an
explicit order of the rows of ``V [k, d]``. :data:`INLP_ORDERS`:

* ``"iteration"``: classifier iteration order (how INLP builds ``V``);
* ``"dim_share"``: each row's share of the class-mean difference, ``|V_i · v| / ‖v‖`` descending, with
  ``v = μ_harmful − μ_harmless`` at the subspace's layer and position (``Σ_i share_i² = ‖proj_V v̂‖² ≤ 1``).

The order name goes to ``provenance.extra["order"]`` (see :meth:`Subspace.reordered`).
"""

from __future__ import annotations

from typing import Literal

import torch

from refusal_lab.core.artifacts import Subspace
from refusal_lab.core.errors import RefusalLabError

INLP_ORDERS = ("iteration", "dim_share")


def dim_shares(basis: torch.Tensor, dim_vector: torch.Tensor) -> torch.Tensor:
    """``|V_i · v| / ‖v‖`` per row of ``basis [k, d]`` → ``[k]`` (float64 math, float32 result)."""
    v = torch.as_tensor(dim_vector).detach().reshape(-1).to("cpu", torch.float64)
    if v.shape[0] != basis.shape[1] or not torch.isfinite(v).all() or not float(v.norm()) > 0:
        raise RefusalLabError(f"the DiM vector for the 'dim_share' order must be a finite, non-zero [d = "
                              f"{basis.shape[1]}] vector, got shape {tuple(v.shape)}")
    return ((basis.to("cpu", torch.float64) @ v).abs() / v.norm()).float()


def reorder_inlp(subspace: Subspace, order: Literal["iteration", "dim_share"],
                 dim_vector: torch.Tensor | None = None) -> Subspace:
    """An iteration-order INLP :class:`Subspace` (as ``INLPResult.to_subspace`` saves it) in a named order.

    ``"iteration"``: unchanged. ``"dim_share"``: rows by ``|V_i · v| / ‖v‖`` descending with those shares as
    ``scores`` (``v = dim_vector``: the harmful − harmless mean difference at the subspace's layer and position;
    default: the shares recorded at fit time in ``provenance.extra["inlp"]["dim_shares"]``). The span is unchanged.
    """
    if order not in INLP_ORDERS:
        raise RefusalLabError(f"INLP order must be one of {', '.join(INLP_ORDERS)}, got {order!r}")
    if subspace.provenance.extra.get("order") != "iteration":
        raise RefusalLabError(f"reorder_inlp needs an INLP subspace in iteration order, got order "
                              f"{subspace.provenance.extra.get('order')!r}; re-extract with `refusal-lab extract "
                              "--method inlp`")
    if order == "iteration":
        return subspace
    if dim_vector is not None:
        shares = dim_shares(subspace.basis, dim_vector)
    else:
        recorded = subspace.provenance.extra.get("inlp", {}).get("dim_shares")
        if recorded is None or len(recorded) != subspace.rank:
            raise RefusalLabError("this INLP subspace records no DiM shares; pass dim_vector (harmful mean − "
                                  "harmless mean at its layer and position) or re-extract it")
        shares = torch.tensor(recorded, dtype=torch.float32)
    return subspace.reordered(shares, "dim_share")
