"""Tests for refusal_lab.data splits: sizes, disjointness, determinism, pairing, save/load."""

from __future__ import annotations

import json

import pytest

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.data import (
    HARMFUL,
    HARMLESS,
    SPLIT_NAMES,
    Prompt,
    PromptSet,
    Splits,
    builtin_prompts,
    default_splits,
    make_splits,
    unmatched_splits,
)

# ----------------------------------------------------------------------------------- splits


def _all_texts(s: Splits):
    return {n: set(ps.texts) for n, ps in s.sets().items()}


def test_default_splits_sizes_and_disjoint():
    s = default_splits()
    sizes = s.sizes()
    assert sizes["train_harmful"] == sizes["train_harmless"] == 128
    assert sizes["val_harmful"] == sizes["val_harmless"] == 32
    assert sizes["test_harmful"] >= 100 and sizes["test_harmless"] >= 100
    assert sum(sizes.values()) == len(builtin_prompts())
    s.check_disjoint()
    texts = _all_texts(s)
    names = list(texts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not texts[a] & texts[b], (a, b)
    for n in SPLIT_NAMES:
        want = HARMFUL if n.endswith("_harmful") else HARMLESS
        assert all(p.label == want for p in getattr(s, n))


def test_splits_deterministic_per_seed():
    a, b, c = default_splits(seed=0), default_splits(seed=0), default_splits(seed=1)
    assert a.data_hash() == b.data_hash()
    assert a.train_harmful.texts == b.train_harmful.texts
    assert a.data_hash() != c.data_hash()
    assert set(a.train_harmful.texts) != set(c.train_harmful.texts)


def test_keep_pairs_keeps_members_together():
    s = default_splits(seed=3)
    for split in ("train", "val", "test"):
        h_ids = {p.pair_id for p in getattr(s, f"{split}_harmful")}
        b_ids = {p.pair_id for p in getattr(s, f"{split}_harmless")}
        assert h_ids == b_ids
    ps = builtin_prompts()
    loose = make_splits(ps.filter(label=HARMFUL), ps.filter(label=HARMLESS), seed=3,
                        keep_pairs=False)
    assert ({p.pair_id for p in loose.train_harmful}
            != {p.pair_id for p in loose.train_harmless})


def test_make_splits_dedupes_and_counts():
    harmful = PromptSet.from_texts([f"Placeholder harmful request {i}" for i in range(30)]
                                   + ["Placeholder harmful request 0"], HARMFUL)
    harmless = PromptSet.from_texts([f"Placeholder harmless request {i}" for i in range(30)],
                                    HARMLESS)
    s = make_splits(harmful, harmless, n_train=10, n_val=5, n_test=None, seed=7)
    assert s.sizes() == {"train_harmful": 10, "train_harmless": 10, "val_harmful": 5,
                         "val_harmless": 5, "test_harmful": 15, "test_harmless": 15}
    s2 = make_splits(harmful, harmless, n_train=10, n_val=5, n_test=4, seed=7)
    assert len(s2.test_harmful) == 4
    assert s2.train_harmful.texts == s.train_harmful.texts


def test_make_splits_not_enough_prompts_message():
    harmful = PromptSet.from_texts([f"Placeholder harmful {i}" for i in range(20)], HARMFUL)
    harmless = PromptSet.from_texts([f"Placeholder harmless {i}" for i in range(200)], HARMLESS)
    with pytest.raises(RefusalLabError) as ei:
        make_splits(harmful, harmless, n_train=16, n_val=8)
    msg = str(ei.value)
    assert "not enough harmful prompts: 20" in msg and "= 24 were asked" in msg


def test_make_splits_rejects_text_in_both_sets():
    harmful = PromptSet.from_texts([f"Placeholder {i}" for i in range(10)], HARMFUL)
    harmless = PromptSet.from_texts([f"Other {i}" for i in range(9)] + ["placeholder  3"],
                                    HARMLESS)
    with pytest.raises(RefusalLabError, match="in both the harmful and the harmless set"):
        make_splits(harmful, harmless, n_train=2, n_val=2)


def test_check_disjoint_raises_on_overlap():
    s = default_splits()
    leaked = s.train_harmful[0]
    bad = Splits(s.train_harmful, s.train_harmless, s.val_harmful, s.val_harmless,
                 PromptSet(list(s.test_harmful) + [leaked], name="test_harmful"),
                 s.test_harmless)
    with pytest.raises(RefusalLabError, match="in both train_harmful and test_harmful"):
        bad.check_disjoint()
    # a harmful text equal to a harmless text is an overlap too
    cross = Splits(s.train_harmful, s.train_harmless, s.val_harmful,
                   PromptSet(list(s.val_harmless) + [Prompt(leaked.text, HARMLESS)]),
                   s.test_harmful, s.test_harmless)
    with pytest.raises(RefusalLabError, match="splits overlap"):
        cross.check_disjoint()


def test_splits_save_load_roundtrip(tmp_path):
    s = default_splits(seed=5)
    path = s.save(tmp_path / "sub" / "splits.json")
    loaded = Splits.load(path)
    assert loaded.data_hash() == s.data_hash()
    for n in SPLIT_NAMES:
        assert list(getattr(loaded, n)) == list(getattr(s, n))
    assert loaded.meta["seed"] == 5
    # an edited file is detected
    doc = json.loads(path.read_text())
    doc["sets"]["val_harmful"][0]["text"] = "An edited placeholder prompt text"
    path.write_text(json.dumps(doc))
    with pytest.raises(RefusalLabError, match="does not match the contents"):
        Splits.load(path)
    with pytest.raises(RefusalLabError, match="not a refusal-lab splits file"):
        (tmp_path / "other.json").write_text("{}")
        Splits.load(tmp_path / "other.json")


def test_unmatched_splits_break_pairing():
    ps = builtin_prompts()
    h, b = ps.filter(label=HARMFUL), ps.filter(label=HARMLESS)
    matched = make_splits(h, b, seed=0)
    un = unmatched_splits(h, b, seed=0)
    assert un.sizes() == matched.sizes()
    assert un.train_harmful.texts == matched.train_harmful.texts
    assert un.train_harmless.texts != matched.train_harmless.texts
    shared = ({p.pair_id for p in un.train_harmful} & {p.pair_id for p in un.train_harmless})
    assert len(shared) < len(un.train_harmful)
    un.check_disjoint()
    assert un.meta["kind"] == "unmatched"
    assert unmatched_splits(h, b, seed=0).data_hash() == un.data_hash()
