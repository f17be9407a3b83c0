"""Tests for refusal_lab.analysis.sensitivity: the comparison table by hand, and DiM's dependence on
data and batching on tiny random models."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model

from refusal_lab.analysis import (
    batching_sensitivity,
    compare_candidates,
    splits_sensitivity,
    train_candidates,
)
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.data import HARMFUL, HARMLESS, PromptSet, Splits
from refusal_lab.models.activations import collect_activations

HARMFUL_A = ["tell me x now", "do the bad y", "zz please", "a long request about q here"]
HARMLESS_A = ["nice day", "what is two plus two?", "hi there", "recipe for bread please"]
HARMFUL_B = ["other request k", "m m m", "a different long one about w"]
HARMLESS_B = ["sky colour?", "write a poem", "how do tides work"]


def _splits(harmful: list[str], harmless: list[str]) -> Splits:
    empty = PromptSet()
    return Splits(PromptSet.from_texts(harmful, HARMFUL), PromptSet.from_texts(harmless, HARMLESS),
                  empty, empty, empty, empty)


def test_compare_candidates_matches_hand_formulas():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 2, 5, generator=g), torch.randn(3, 2, 5, generator=g)
    a[0, 0] = 0.0  # a zero candidate (identical means): cosine 0, rel_diff NaN
    b[2, 1] = -2.5 * a[2, 1]  # antiparallel: cosine −1, rel_diff 3.5
    t = compare_candidates(a, b, ("m", "u"))
    assert list(t.columns) == ["layer", "position", "cosine", "norm_m", "norm_u", "rel_diff"]
    assert t["layer"].tolist() == [0, 0, 1, 1, 2, 2]
    assert t["position"].tolist() == [-2, -1] * 3
    for row in t.itertuples():
        x, y = a[row.layer, row.position + 2], b[row.layer, row.position + 2]
        nx = math.sqrt(sum(float(v) ** 2 for v in x))
        ny = math.sqrt(sum(float(v) ** 2 for v in y))
        dot = sum(float(u) * float(v) for u, v in zip(x, y))
        assert row.norm_m == pytest.approx(nx, rel=1e-6)
        assert row.norm_u == pytest.approx(ny, rel=1e-6)
        if nx == 0:
            assert row.cosine == 0.0 and math.isnan(row.rel_diff)
            continue
        assert row.cosine == pytest.approx(dot / (nx * ny), abs=1e-6)
        diff = math.sqrt(sum((float(v) - float(u)) ** 2 for u, v in zip(x, y)))
        assert row.rel_diff == pytest.approx(diff / nx, rel=1e-6)
    last = t.iloc[-1]
    assert last.cosine == pytest.approx(-1.0, abs=1e-6) and last.rel_diff == pytest.approx(3.5)


def test_compare_candidates_rejects_mismatched_shapes():
    with pytest.raises(RefusalLabError, match="pass dim_candidates output"):
        compare_candidates(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))
    with pytest.raises(RefusalLabError, match=r"\[layers, positions, d\]"):
        compare_candidates(torch.zeros(3, 4), torch.zeros(3, 4))


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma2"])
def test_batched_and_single_extraction_agree_on_tiny_models(arch):
    lm = tiny_model(arch)
    t = batching_sensitivity(lm, HARMFUL_A, HARMLESS_A, batch_size=4)
    assert len(t) == lm.n_layers * lm.n_post_instruction
    live = t[t["norm_single"] > 1e-6]
    assert len(live) >= (lm.n_layers - 1) * lm.n_post_instruction  # all but the embedding layer
    assert live["cosine"].min() > 0.9999
    assert live["rel_diff"].max() < 1e-3
    # the single side is, by hand, the difference of means of one-prompt-at-a-time activations
    ones = [torch.cat([collect_activations(lm, [p], 1, use_cache=False).acts for p in texts])
            for texts in (HARMFUL_A, HARMLESS_A)]
    v = (ones[0].double().mean(0) - ones[1].double().mean(0)).norm(dim=-1).reshape(-1)
    assert torch.allclose(torch.tensor(t["norm_single"].values), v, rtol=1e-4, atol=1e-7)


def test_batching_sensitivity_needs_a_real_batch():
    with pytest.raises(RefusalLabError, match="batch size of 2 or more"):
        batching_sensitivity(tiny_model("qwen2"), HARMFUL_A, HARMLESS_A, batch_size=1)


def test_splits_sensitivity_against_hand_dim():
    lm = tiny_model("qwen2")
    a, b = _splits(HARMFUL_A, HARMLESS_A), _splits(HARMFUL_B, HARMLESS_B)
    t = splits_sensitivity(lm, a, b, batch_size=2, use_cache=False)
    means = [collect_activations(lm, texts, 8, use_cache=False).mean
             for texts in (HARMFUL_A, HARMLESS_A, HARMFUL_B, HARMLESS_B)]
    va, vb = means[0] - means[1], means[2] - means[3]  # [L, P, d]
    cos = (va * vb).sum(-1) / (va.norm(dim=-1) * vb.norm(dim=-1))
    live = va.norm(dim=-1).reshape(-1) > 1e-6
    got = torch.tensor(t["cosine"].values)
    assert torch.allclose(got[live], cos.reshape(-1)[live], atol=1e-4)
    assert got[live].min() < 0.99  # different data gives a visibly different direction
    assert torch.allclose(torch.tensor(t["norm_matched"].values), va.norm(dim=-1).reshape(-1),
                          rtol=1e-4, atol=1e-7)
    same = splits_sensitivity(lm, a, a, ("x", "y"), use_cache=False)
    assert same.loc[live.numpy(), "cosine"].min() > 0.9999
    assert torch.allclose(train_candidates(lm, a, use_cache=False).double(), va, atol=1e-6)
