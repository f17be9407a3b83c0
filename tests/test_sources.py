"""Tests for the generic harmless set, the matched/unmatched/mixed data sources and the held-out
slices (refusal_lab.data.sources)."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import re
from collections import Counter
from importlib import resources

import pytest

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.data import (
    HARMFUL,
    HARMLESS,
    HELDOUT_SIZE,
    SOURCES,
    Prompt,
    PromptSet,
    Splits,
    dataset_splits,
    default_splits,
    heldout_advbench,
    heldout_generic,
    load_builtin_pairs,
    load_generic_harmless,
    load_jsonl,
    load_pyrit_advbench,
)

needs_pyrit = pytest.mark.skipif(importlib.util.find_spec("pyrit") is None,
                                 reason="pyrit is not installed (pip install --no-deps pyrit)")

STOP = set("a an the and or of to in on for with at by from is are was were be do does did i my "
           "me you your it its this that what how why when which who can should could would will "
           "there their they we our about as into than so if not no any some".split())


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


def _content_words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower())) - STOP


def _close(texts_a: list[str], texts_b: list[str] | None, threshold: float
           ) -> list[tuple[str, str]]:
    """Pairs (within ``texts_a``, or across a and b) whose content-word Jaccard is ≥ threshold."""
    a = [(t, _content_words(t)) for t in texts_a]
    pairs = (itertools.combinations(a, 2) if texts_b is None
             else itertools.product(a, [(t, _content_words(t)) for t in texts_b]))
    return [(s, t) for (s, x), (t, y) in pairs if len(x & y) >= threshold * max(len(x | y), 1)]


# ----------------------------------------------------------------------------------- generic set


def _generic_rows():
    raw = resources.files("refusal_lab.data").joinpath("builtin", "generic_harmless.jsonl")
    lines = raw.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_generic_set_size_fields_and_variety():
    rows = _generic_rows()
    assert len(rows) >= 400
    for r in rows:
        assert set(r) == {"prompt", "category"}
        assert r["prompt"] == r["prompt"].strip() and "\n" not in r["prompt"]
        assert re.fullmatch(r"[a-z_]+", r["category"])
    cats = Counter(r["category"] for r in rows)
    assert len(cats) >= 15 and min(cats.values()) >= 10
    words = [len(r["prompt"].split()) for r in rows]
    assert min(words) <= 6 and max(words) >= 30  # short questions and long multi-sentence requests
    openings = Counter(" ".join(r["prompt"].lower().split()[:3]) for r in rows)
    assert max(openings.values()) <= 0.08 * len(rows)  # no single phrasing dominates


def test_generic_set_loads_as_harmless_promptset_and_with_load_jsonl():
    ps = load_generic_harmless()
    rows = _generic_rows()
    assert ps.texts == [r["prompt"] for r in rows]
    assert [p.category for p in ps] == [r["category"] for r in rows]
    assert all(p.label == HARMLESS and p.source == "builtin:generic" for p in ps)
    path = resources.files("refusal_lab.data").joinpath("builtin", "generic_harmless.jsonl")
    assert load_jsonl(str(path), label=HARMLESS).texts == ps.texts  # the generic record format


def test_generic_set_has_no_duplicates_or_near_duplicates():
    texts = [r["prompt"] for r in _generic_rows()]
    assert len({_key(t) for t in texts}) == len(texts)
    close = _close(texts, None, 0.6)
    assert not close, close[:3]


def test_generic_set_does_not_overlap_the_pairs():
    texts = [r["prompt"] for r in _generic_rows()]
    pairs = [r[side] for r in load_builtin_pairs() for side in ("harmful", "harmless")]
    assert not {_key(t) for t in texts} & {_key(t) for t in pairs}
    close = _close(texts, pairs, 0.5)
    assert not close, close[:3]


# ----------------------------------------------------------------------------------- held-out


def test_heldout_generic_is_fixed_stratified_and_hash_chosen():
    ps = load_generic_harmless()
    held = heldout_generic()
    assert len(held) == HELDOUT_SIZE and held.texts == heldout_generic().texts
    n_cat = Counter(p.category for p in ps)
    h_cat = Counter(p.category for p in held)
    for cat, m in n_cat.items():  # proportional allocation, to within one prompt
        assert abs(h_cat[cat] - HELDOUT_SIZE * m / len(ps)) <= 1, cat
        # within a category, the held-out prompts are those with the smallest sha256(text key)
        by_hash = sorted((p.text for p in ps if p.category == cat),
                         key=lambda t: hashlib.sha256(_key(t).encode()).hexdigest())
        assert {p.text for p in held if p.category == cat} == set(by_hash[:h_cat[cat]])


def test_heldout_minus_a_foreign_splits_train_and_val():
    held = heldout_generic()
    s = default_splits()
    leaked = Prompt(held[0].text, HARMLESS)
    foreign = Splits(s.train_harmful, PromptSet(list(s.train_harmless) + [leaked]), s.val_harmful,
                     s.val_harmless, s.test_harmful, s.test_harmless)
    kept = heldout_generic(foreign)
    assert kept.texts == held.texts[1:]
    assert heldout_generic(s).texts == held.texts


@needs_pyrit
def test_heldout_advbench_fixed_and_from_advbench():
    held = heldout_advbench()
    assert len(held) == HELDOUT_SIZE and held.texts == heldout_advbench().texts
    assert set(held.texts) <= set(load_pyrit_advbench().texts)
    assert all(p.label == HARMFUL for p in held)


# ----------------------------------------------------------------------------------- sources


def _texts(s: Splits) -> dict[str, set[str]]:
    return {n: {_key(t) for t in ps.texts} for n, ps in s.sets().items()}


def _assert_pairwise_disjoint(s: Splits) -> None:
    texts = _texts(s)
    for a, b in itertools.combinations(texts, 2):
        assert not texts[a] & texts[b], (a, b)


@needs_pyrit
@pytest.mark.parametrize("source", SOURCES)
def test_dataset_splits_sizes_labels_disjoint_and_heldout_free(source):
    s = dataset_splits(source, n_train=20, n_val=6, seed=1, n_test=10)
    assert s.sizes() == {"train_harmful": 20, "train_harmless": 20, "val_harmful": 6,
                         "val_harmless": 6, "test_harmful": 10, "test_harmless": 10}
    for n, ps in s.sets().items():
        assert all(p.label == (HARMFUL if n.endswith("_harmful") else HARMLESS) for p in ps)
    _assert_pairwise_disjoint(s)
    held = {_key(t) for t in heldout_generic().texts + heldout_advbench().texts}
    assert not held & set().union(*_texts(s).values())
    assert s.meta["source"] == source


@needs_pyrit
def test_sources_draw_from_the_right_data():
    m, u = dataset_splits("matched", 16, 4, seed=2), dataset_splits("unmatched", 16, 4, seed=2)
    assert {p.source for ps in m.sets().values() for p in ps} == {"builtin"}
    assert {p.source for p in u.train_harmful + u.val_harmful} == {"pyrit:adv_bench"}
    assert {p.source for p in u.train_harmless + u.val_harmless} == {"builtin:generic"}
    # unmatched with n_test=None: the test split is all of the pool left after held-out, train, val
    assert len(u.test_harmful) == len(load_pyrit_advbench()) - HELDOUT_SIZE - 20
    assert len(u.test_harmless) == len(load_generic_harmless()) - HELDOUT_SIZE - 20


@needs_pyrit
def test_mixed_is_half_matched_half_unmatched():
    mixed = dataset_splits("mixed", n_train=5, n_val=3, seed=4, n_test=4)
    m = dataset_splits("matched", n_train=3, n_val=2, seed=4, n_test=2)
    u = dataset_splits("unmatched", n_train=2, n_val=1, seed=4, n_test=2)
    for n in mixed.sets():
        assert set(getattr(mixed, n).texts) == set(getattr(m, n).texts) | set(getattr(u, n).texts)
    for split in ("train", "val", "test"):  # the matched part keeps its pairs together
        builtin = lambda label: {p.pair_id for p in getattr(mixed, f"{split}_{label}")  # noqa: E731
                                 if p.source == "builtin"}
        assert builtin(HARMFUL) == builtin(HARMLESS)
    big = dataset_splits("mixed", n_train=64, n_val=16, seed=4)
    assert Counter(p.source for p in big.train_harmless) == {"builtin": 32, "builtin:generic": 32}
    assert len({p.source for p in big.train_harmful[:32]}) == 2  # shuffled, not concatenated

@needs_pyrit
@pytest.mark.parametrize("source", SOURCES)
def test_dataset_splits_deterministic_per_seed(source):
    a, b, c = (dataset_splits(source, 24, 8, seed=k) for k in (0, 0, 1))
    assert a.data_hash() == b.data_hash()
    assert all(getattr(a, n).texts == getattr(b, n).texts for n in a.sets())
    assert a.data_hash() != c.data_hash()
    assert set(a.train_harmless.texts) != set(c.train_harmless.texts)


@needs_pyrit
def test_data_hash_covers_the_source(tmp_path):
    hashes = {src: dataset_splits(src, 24, 8, seed=0).data_hash() for src in SOURCES}
    assert len(set(hashes.values())) == len(SOURCES)
    s = dataset_splits("matched", 24, 8, seed=0)
    relabelled = Splits(*s.sets().values(), meta={**s.meta, "source": "unmatched"})
    bare = Splits(*s.sets().values(), meta={})
    assert len({s.data_hash(), relabelled.data_hash(), bare.data_hash()}) == 3
    loaded = Splits.load(s.save(tmp_path / "splits.json"))
    assert loaded.data_hash() == s.data_hash() and loaded.meta["source"] == "matched"


def test_default_splits_are_the_matched_source():
    s = default_splits(seed=3)
    assert s.meta["source"] == "matched"
    assert s.data_hash() == dataset_splits("matched", 128, 32, seed=3).data_hash()


def test_unknown_source_and_too_many_prompts_are_clear_errors():
    with pytest.raises(RefusalLabError, match="unknown data source 'paired'; use one of matched"):
        dataset_splits("paired")
    with pytest.raises(RefusalLabError, match="not enough harmful prompts"):
        dataset_splits("matched", n_train=300, n_val=100)
