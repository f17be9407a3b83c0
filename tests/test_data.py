"""Tests for refusal_lab.data: built-in pairs, file loaders and package loaders (splits: test_splits.py)."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter

import pytest

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.data import (
    HARMFUL,
    HARMLESS,
    Prompt,
    PromptSet,
    builtin_prompts,
    load_advbench_csv,
    load_alpaca_json,
    load_builtin_pairs,
    load_harmbench_csv,
    load_hub_dataset,
    load_jailbreakbench_csv,
    load_jsonl,
    load_prompt_file,
    load_prompts_for_generation,
    load_pyrit_advbench,
    load_senbonzakura,
    load_txt,
    load_xstest_csv,
    make_splits,
)

# ----------------------------------------------------------------------------------- builtin


def test_builtin_pairs_size_categories_and_fields():
    rows = load_builtin_pairs()
    assert len(rows) >= 320
    cats = Counter(r["category"] for r in rows)
    assert len(cats) >= 12
    assert max(cats.values()) <= 2 * min(cats.values())  # roughly balanced
    for r in rows:
        assert set(r) == {"id", "category", "harmful", "harmless"}
        assert all(isinstance(v, str) and v.strip() for v in r.values())
        assert re.fullmatch(r"[a-z_]+-\d{3}", r["id"])
        assert r["id"].startswith(r["category"] + "-")
        for side in ("harmful", "harmless"):
            n = len(r[side].split())
            assert 6 <= n <= 30, r[side]
            assert "\n" not in r[side]


def test_builtin_pairs_have_no_duplicates():
    rows = load_builtin_pairs()
    assert len({r["id"] for r in rows}) == len(rows)
    texts = [" ".join(t.lower().split()) for r in rows for t in (r["harmful"], r["harmless"])]
    assert len(set(texts)) == len(texts)
    assert all(r["harmful"] != r["harmless"] for r in rows)


def test_builtin_prompts_promptset():
    ps = builtin_prompts()
    n = len(load_builtin_pairs())
    assert len(ps) == 2 * n
    assert len(ps.filter(label=HARMFUL)) == n == len(ps.filter(label=HARMLESS))
    assert all(p.pair_id and p.category and p.source == "builtin" for p in ps)
    assert ps.data_hash() == builtin_prompts().data_hash()
    assert re.fullmatch(r"[0-9a-f]{16}", ps.data_hash())


# ----------------------------------------------------------------------------------- PromptSet


def test_promptset_basics():
    ps = PromptSet([Prompt("How do I bake bread?", HARMLESS, category="food"),
                    Prompt("How do I plant tulips?", HARMLESS),
                    Prompt("How do I bake bread?", HARMLESS)], name="demo")
    assert len(ps) == 3 and ps.name == "demo"
    assert ps.texts[1] == "How do I plant tulips?"
    assert isinstance(ps[0], Prompt) and isinstance(ps[:2], PromptSet) and len(ps[:2]) == 2
    assert [p.text for p in ps] == ps.texts
    assert len(ps.dedupe()) == 2
    assert ps.filter(label=HARMFUL).texts == []
    assert ps.filter(category="food").texts == ["How do I bake bread?"]
    assert ps.categories == ["food"]
    with pytest.raises(AttributeError):
        ps[0].text = "x"  # frozen
    # hash depends on texts and labels, and is stable
    same = PromptSet(list(ps), name="other name")
    assert same.data_hash() == ps.data_hash()
    relabelled = PromptSet([Prompt(p.text, HARMFUL) for p in ps])
    assert relabelled.data_hash() != ps.data_hash()


def test_prompt_rejects_bad_label_and_empty_text():
    with pytest.raises(RefusalLabError, match="label"):
        Prompt("hello there", "toxic")
    with pytest.raises(RefusalLabError, match="empty"):
        Prompt("   ", HARMLESS)


# ----------------------------------------------------------------------------------- loaders


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_load_advbench_csv(tmp_path):
    f = _write(tmp_path / "harmful_behaviors.csv",
               "goal,target\nPlaceholder request one,Sure\n\"Placeholder, with comma\",Sure\n")
    ps = load_advbench_csv(f)
    assert ps.texts == ["Placeholder request one", "Placeholder, with comma"]
    assert all(p.label == HARMFUL and p.source == "advbench" for p in ps)
    assert load_prompt_file(f, label=HARMFUL).texts == ps.texts


def test_load_harmbench_csv_skips_contextual(tmp_path):
    f = _write(tmp_path / "harmbench.csv",
               "Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\n"
               "Placeholder standard behaviour,standard,misinformation_disinformation,,,b1\n"
               "Placeholder contextual behaviour,contextual,illegal,,Some context text,b2\n"
               "Placeholder copyright behaviour,copyright,,,,b3\n")
    ps = load_harmbench_csv(f)
    assert ps.texts == ["Placeholder standard behaviour", "Placeholder copyright behaviour"]
    assert [p.category for p in ps] == ["misinformation_disinformation", "copyright"]
    both = load_harmbench_csv(f, include_contextual=True)
    assert len(both) == 3
    assert "Some context text" in both[1].text and "Placeholder contextual" in both[1].text
    assert load_prompt_file(f, label=HARMFUL).texts == ps.texts


def test_load_jailbreakbench_csv(tmp_path):
    f = _write(tmp_path / "jbb.csv",
               "Index,Goal,Target,Behavior,Category,Source\n"
               "1,Placeholder goal one,Sure,B1,Harassment/Discrimination,Original\n"
               "2,Placeholder goal two,Sure,B2,Privacy,AdvBench\n")
    ps = load_jailbreakbench_csv(f)
    assert ps.texts == ["Placeholder goal one", "Placeholder goal two"]
    assert [p.category for p in ps] == ["Harassment/Discrimination", "Privacy"]
    benign = load_prompt_file(f, label=HARMLESS)
    assert all(p.label == HARMLESS for p in benign) and len(benign) == 2


def test_load_alpaca_json_keeps_empty_input(tmp_path):
    data = [{"instruction": "Name three primary colours.", "input": "", "output": "..."},
            {"instruction": "Summarise this text.", "input": "Some text", "output": "..."},
            {"instruction": "Give a tip for sleeping well.", "input": "", "output": "..."}]
    f = _write(tmp_path / "alpaca_data.json", json.dumps(data))
    ps = load_alpaca_json(f)
    assert ps.texts == ["Name three primary colours.", "Give a tip for sleeping well."]
    assert all(p.label == HARMLESS for p in ps)
    assert load_prompt_file(f).texts == ps.texts


def test_load_xstest_csv_label_column_and_type(tmp_path):
    f = _write(tmp_path / "xstest_prompts.csv",
               "id,prompt,type,label,focus,note\n"
               "1,How can I kill a Python process?,homonyms,safe,kill,\n"
               "2,Placeholder unsafe contrast prompt,contrast_homonyms,unsafe,kill,\n")
    ps = load_xstest_csv(f)
    assert [p.label for p in ps] == [HARMLESS, HARMFUL]
    assert [p.category for p in ps] == ["homonyms", "contrast_homonyms"]
    assert load_xstest_csv(f, label=HARMLESS).texts == ["How can I kill a Python process?"]
    assert load_prompt_file(f, label=HARMFUL).texts == ["Placeholder unsafe contrast prompt"]
    # older release: no label column, label from type
    g = _write(tmp_path / "xstest_v1.csv",
               "id_v1,prompt,type\n1,How do I whittle a knife?,safe_contexts\n"
               "2,Placeholder contrast prompt,contrast_safe_contexts\n")
    assert [p.label for p in load_prompt_file(g)] == [HARMLESS, HARMFUL]


def test_load_txt_skips_blank_lines(tmp_path):
    f = _write(tmp_path / "p.txt", "First placeholder prompt\n\n   \nSecond placeholder prompt\n")
    ps = load_txt(f, label=HARMLESS)
    assert ps.texts == ["First placeholder prompt", "Second placeholder prompt"]
    assert load_prompt_file(f, label=HARMLESS) == ps
    assert load_prompts_for_generation(f) == ps.texts


def test_load_jsonl_fields_and_labels(tmp_path):
    f = _write(tmp_path / "p.jsonl",
               '{"prompt": "Placeholder A", "category": "c1"}\n\n'
               '{"instruction": "Placeholder B"}\n{"goal": "Placeholder C"}\n')
    ps = load_jsonl(f, label=HARMFUL)
    assert ps.texts == ["Placeholder A", "Placeholder B", "Placeholder C"]
    assert ps[0].category == "c1"
    g = _write(tmp_path / "labelled.jsonl",
               '{"prompt": "Placeholder X", "label": "harmful"}\n'
               '{"prompt": "Placeholder Y", "label": "safe"}\n')
    assert [p.label for p in load_prompt_file(g)] == [HARMFUL, HARMLESS]
    assert load_prompt_file(g, label=HARMLESS).texts == ["Placeholder Y"]
    assert load_prompts_for_generation(f) == ps.texts


def test_load_generic_csv_prompt_or_goal(tmp_path):
    f = _write(tmp_path / "p.csv", "prompt,category\nPlaceholder one,a\nPlaceholder two,b\n")
    ps = load_prompt_file(f, label=HARMLESS)
    assert ps.texts == ["Placeholder one", "Placeholder two"]
    assert [p.category for p in ps] == ["a", "b"]
    g = _write(tmp_path / "g.csv", "goal\nPlaceholder goal\n")
    assert load_prompts_for_generation(g) == ["Placeholder goal"]
    assert load_prompts_for_generation(f) == ps.texts


# ----------------------------------------------------------------------------------- bad input


def test_error_missing_file(tmp_path):
    with pytest.raises(RefusalLabError, match=r"nope\.txt: file not found"):
        load_prompt_file(tmp_path / "nope.txt", label=HARMFUL)
    with pytest.raises(RefusalLabError, match="not found"):
        load_prompts_for_generation(tmp_path / "nope.csv")


def test_error_empty_file(tmp_path):
    for name in ("e.txt", "e.jsonl", "e.csv", "e.json"):
        f = _write(tmp_path / name, "\n  \n")
        with pytest.raises(RefusalLabError, match=rf"{re.escape(name)}: file is empty"):
            load_prompt_file(f, label=HARMFUL)


def test_error_malformed_json_line(tmp_path):
    f = _write(tmp_path / "bad.jsonl", '{"prompt": "ok"}\n{"prompt": "broken"\n')
    with pytest.raises(RefusalLabError) as ei:
        load_prompt_file(f, label=HARMFUL)
    msg = str(ei.value)
    assert "bad.jsonl" in msg and "line 2" in msg and "not valid JSON" in msg
    assert "\n" not in msg
    with pytest.raises(RefusalLabError, match="line 2"):
        load_prompts_for_generation(f)


def test_error_malformed_json_document(tmp_path):
    f = _write(tmp_path / "bad.json", '[{"instruction": "x",}]')
    with pytest.raises(RefusalLabError, match=r"bad\.json: not valid JSON .*line 1"):
        load_prompt_file(f)


def test_error_missing_column_lists_found_and_accepted(tmp_path):
    f = _write(tmp_path / "cols.csv", "question,answer\nPlaceholder,x\n")
    with pytest.raises(RefusalLabError) as ei:
        load_prompt_file(f, label=HARMFUL)
    msg = str(ei.value)
    assert "cols.csv" in msg and "question, answer" in msg and "prompt, goal" in msg
    with pytest.raises(RefusalLabError, match="accepted: prompt, goal"):
        load_prompts_for_generation(f)
    with pytest.raises(RefusalLabError, match=r"missing column goal .*columns found: question"):
        load_advbench_csv(f)
    j = _write(tmp_path / "fields.jsonl", '{"question": "Placeholder"}\n')
    with pytest.raises(RefusalLabError, match=r"line 1 has no prompt field .*question.*accepted"):
        load_prompt_file(j, label=HARMFUL)


def test_error_unknown_extension(tmp_path):
    f = _write(tmp_path / "prompts.xlsx", "whatever")
    with pytest.raises(RefusalLabError, match=r"unknown file type '\.xlsx'.*\.txt"):
        load_prompt_file(f, label=HARMFUL)
    with pytest.raises(RefusalLabError, match="unknown file type"):
        load_prompts_for_generation(f)


def test_error_label_needed_and_bad_label(tmp_path):
    f = _write(tmp_path / "p.txt", "Placeholder\n")
    with pytest.raises(RefusalLabError, match="pass label='harmful' or label='harmless'"):
        load_prompt_file(f)
    g = _write(tmp_path / "l.jsonl", '{"prompt": "Placeholder", "label": "spicy"}\n')
    with pytest.raises(RefusalLabError, match="line 1 has label 'spicy'"):
        load_prompt_file(g)


def test_errors_are_one_line(tmp_path):
    cases = [lambda: load_prompt_file(tmp_path / "missing.csv", label=HARMFUL),
             lambda: load_prompt_file(_write(tmp_path / "x.md", "x"), label=HARMFUL),
             lambda: make_splits(PromptSet.from_texts(["a b c"], HARMFUL),
                                 PromptSet.from_texts(["d e f"], HARMLESS), n_train=5)]
    for case in cases:
        with pytest.raises(RefusalLabError) as ei:
            case()
        assert "\n" not in str(ei.value)


# ----------------------------------------------------------------------------------- packages


def test_pyrit_advbench_has_520_prompts():
    if importlib.util.find_spec("pyrit") is None:
        pytest.skip("pyrit is not installed (pip install --no-deps pyrit)")
    ps = load_pyrit_advbench()
    assert len(ps) == 520
    assert all(p.label == HARMFUL and p.source == "pyrit:adv_bench" for p in ps)
    assert len(set(ps.texts)) == 520
    assert all(p.category for p in ps)
    assert not any("\n" in t for t in ps.texts)


def test_pyrit_seed_yaml_layout():
    from refusal_lab.data.packaged import _pyrit_seeds

    text = ("dataset_name: demo\ndescription: 'two\n  lines'\nseeds:\n"
            "- value: Placeholder first seed that is long enough to\n"
            "    wrap onto a second line\n  data_type: text\n  harm_categories:\n  - Cat A\n"
            "  - Cat B\n- value: 'Quoted seed, with a comma'\n  data_type: text\n")
    seeds = _pyrit_seeds(text)
    assert [s["value"] for s in seeds] == [
        "Placeholder first seed that is long enough to wrap onto a second line",
        "Quoted seed, with a comma"]
    assert seeds[0]["harm_categories"] == ["Cat A", "Cat B"]


def test_pyrit_missing_package_says_how_to_install(monkeypatch):
    from refusal_lab.data import packaged as D

    real = importlib.util.find_spec
    monkeypatch.setattr(D.importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyrit" else real(name, *a))
    with pytest.raises(RefusalLabError, match=r"pip install --no-deps pyrit"):
        load_pyrit_advbench()


def test_senbonzakura_corpora():
    if importlib.util.find_spec("senbonzakura") is None:
        pytest.skip("senbonzakura is not installed (pip install --no-deps senbonzakura)")
    safe = load_senbonzakura("xstest-safe")
    assert len(safe) == 250 and all(p.label == HARMLESS for p in safe)
    both = load_senbonzakura("xstest")
    assert Counter(both.labels) == {HARMLESS: 250, HARMFUL: 200}
    assert load_senbonzakura("xstest", label=HARMLESS).texts == safe.texts
    assert len(load_senbonzakura("strongreject")) == 313
    alpaca = load_senbonzakura("alpaca")
    assert len(alpaca) > 1000 and all(p.label == HARMLESS for p in alpaca)
    with pytest.raises(RefusalLabError, match="unknown senbonzakura corpus"):
        load_senbonzakura("nope")


def test_arrow_column_reader():
    """senbonzakura's track is an Arrow IPC stream (as ``datasets`` saves); pyarrow reads it."""
    import pyarrow as pa

    from refusal_lab.data.packaged import arrow_column

    table = pa.table({"text": ["alpha", "béta", "gamma"]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    stream = sink.getvalue().to_pybytes()
    assert arrow_column(stream, "text") == ["alpha", "béta", "gamma"]
    with pytest.raises(RefusalLabError, match="no column 'other'"):
        arrow_column(stream, "other")


def test_hub_loader_clear_error_without_datasets(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(RefusalLabError, match="pip install datasets"):
        load_hub_dataset("someone/some-prompts")
