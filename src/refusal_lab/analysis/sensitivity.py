"""How much difference-in-means candidates depend on the training data and on batching.

Both comparisons are tables over every layer ``l`` and post-instruction position ``i`` (negative,
−1 = last prompt token) of two candidate sets ``a, b ∈ R^{L×P×d}`` (``a[l, i] = μ_harmful −
μ_harmless`` there):

- ``cosine = a_li·b_li / (‖a_li‖ ‖b_li‖)`` (0 when either vector is zero);
- ``norm_<a>``, ``norm_<b>``: the norms ``‖a_li‖``, ``‖b_li‖`` (ActAdd adds the unnormalised
  vector, so a norm ratio matters as much as the angle);
- ``rel_diff = ‖b_li − a_li‖ / ‖a_li‖`` (NaN where ``a_li = 0``).

:func:`splits_sensitivity` compares DiM from two :class:`~refusal_lab.data.Splits`' train sets
(e.g. the matched and unmatched sources); :func:`batching_sensitivity` compares DiM of the same
prompts collected ``batch_size`` at a time against one at a time (no activation cache), which can
differ only through padding and kernel numerics.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.data import Splits
from refusal_lab.fitting.dim import cosine_matrix, dim_candidates
from refusal_lab.models.activations import collect_activations


def compare_candidates(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str] = ("a", "b")
                       ) -> pd.DataFrame:
    """Per-(layer, position) table comparing candidates ``a, b`` of shape ``[L, P, d]``: columns
    ``layer, position, cosine, norm_<names[0]>, norm_<names[1]>, rel_diff`` (module docstring)."""
    if a.ndim != 3 or a.shape != b.shape:
        raise RefusalLabError(f"candidate sets must both be [layers, positions, d], got "
                              f"{tuple(a.shape)} and {tuple(b.shape)}; pass dim_candidates output")
    n_layers, n_pos, d = a.shape
    flat_a, flat_b = a.detach().double().reshape(-1, d), b.detach().double().reshape(-1, d)
    norm_a, norm_b = flat_a.norm(dim=-1), flat_b.norm(dim=-1)
    rel = torch.where(norm_a > 0, (flat_b - flat_a).norm(dim=-1) / norm_a, torch.nan)
    layer, pos = torch.meshgrid(torch.arange(n_layers), torch.arange(n_pos) - n_pos, indexing="ij")
    return pd.DataFrame({
        "layer": layer.reshape(-1).numpy(), "position": pos.reshape(-1).numpy(),
        "cosine": cosine_matrix(flat_a, flat_b).diagonal().double().numpy(),
        f"norm_{names[0]}": norm_a.numpy(), f"norm_{names[1]}": norm_b.numpy(),
        "rel_diff": rel.numpy()})


def _dim(lm, harmful: Sequence[str], harmless: Sequence[str], batch_size: int,
         use_cache: bool) -> torch.Tensor:
    h = collect_activations(lm, list(harmful), batch_size, use_cache, description="harmful acts")
    b = collect_activations(lm, list(harmless), batch_size, use_cache, description="harmless acts")
    return dim_candidates(h.mean, b.mean)


def train_candidates(lm, splits: Splits, batch_size: int = 16, use_cache: bool = True
                     ) -> torch.Tensor:
    """DiM candidates ``[L, P, d]`` from ``splits``' train sets (as the pipeline extracts them)."""
    return _dim(lm, splits.train_harmful.texts, splits.train_harmless.texts, batch_size, use_cache)


def splits_sensitivity(lm, a: Splits, b: Splits, names: tuple[str, str] = ("matched", "unmatched"),
                       batch_size: int = 16, use_cache: bool = True) -> pd.DataFrame:
    """:func:`compare_candidates` of the DiM candidates trained on ``a`` and on ``b``."""
    return compare_candidates(train_candidates(lm, a, batch_size, use_cache),
                              train_candidates(lm, b, batch_size, use_cache), names)


def batching_sensitivity(lm, harmful: Sequence[str], harmless: Sequence[str], batch_size: int = 16
                         ) -> pd.DataFrame:
    """:func:`compare_candidates` of DiM collected ``batch_size`` prompts at a time (``a``,
    "batched") against one prompt at a time (``b``, "single"); activations are never cached."""
    if batch_size < 2:
        raise RefusalLabError(f"batch_size={batch_size} compares single prompts with themselves; "
                              f"pass a batch size of 2 or more")
    return compare_candidates(_dim(lm, harmful, harmless, batch_size, use_cache=False),
                              _dim(lm, harmful, harmless, 1, use_cache=False),
                              ("batched", "single"))
