"""The CLI contract: command names, outputs, and one-line errors with a non-zero exit for bad input."""

import json

import pytest
import torch
from conftest import invoke_cli as invoke

from refusal_lab.core.artifacts import Direction, Provenance


def fake_run(root, direction: Direction):
    """A run directory whose DiM selection at scope ``all`` chose ``direction`` (the layout extract writes)."""
    from refusal_lab.pipeline.artifacts import chosen_stem, selection_stage
    from refusal_lab.pipeline.rundir import RunDirectory

    with RunDirectory(root).stage(selection_stage("dim", "all")) as info:
        direction.save(chosen_stem(root, "dim", "all"))
        info |= {"chosen": True, "closest": None}
    return root


@pytest.fixture
def run_dir(tmp_path):
    return fake_run(tmp_path, Direction(torch.randn(64), Provenance("tiny-qwen2", "dim", 64, layer=1, position=-1)))


def test_generate_writes_jsonl_for_txt_prompts(model_dir, run_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("first prompt\n\nsecond prompt\n")
    out = tmp_path / "out.jsonl"
    result, _ = invoke("generate", "--model", model_dir, "--prompts", prompts, "--out", out, "--max-new-tokens", 3,
                       "--run", run_dir, "--intervention", "ablate")
    assert result.exit_code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["first prompt", "second prompt"]
    assert all("response" in r for r in rows)


@pytest.mark.parametrize("content,suffix,message", [
    ("", ".txt", "empty"),
    ('{"prompt": "ok"}\n{broken\n', ".jsonl", "line 2"),
    ("question,answer\nx,y\n", ".csv", "prompt"),
])
def test_bad_prompt_files_are_one_line_errors(model_dir, tmp_path, content, suffix, message):
    prompts = tmp_path / f"p{suffix}"
    prompts.write_text(content)
    result, text = invoke("generate", "--model", model_dir, "--prompts", prompts, "--out", tmp_path / "o.jsonl")
    assert result.exit_code != 0
    assert message in text


def test_direction_for_another_model_is_rejected(model_dir, tmp_path):
    fake_run(tmp_path, Direction(torch.randn(32), Provenance("other", "dim", 32, layer=0, position=-1)))
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    result, text = invoke("generate", "--model", model_dir, "--prompts", prompts, "--out", tmp_path / "o.jsonl",
                          "--run", tmp_path, "--intervention", "ablate")
    assert result.exit_code != 0
    assert "hidden size 32" in text and "64" in text


def test_unknown_intervention_and_unknown_model(model_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    result, text = invoke("generate", "--model", model_dir, "--prompts", prompts, "--out", tmp_path / "o.jsonl",
                          "--intervention", "explode")
    assert result.exit_code == 2 and "explode" in text
    result, text = invoke("generate", "--model", "./no-such-model", "--prompts", prompts, "--out", tmp_path / "o")
    assert result.exit_code != 0 and "does not exist" in text


def test_abliterated_directory_reproduces_hooked_ablation(model_dir, run_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from refusal_lab.core.artifacts import load_artifact
    from refusal_lab.interventions import Intervention, Projection, apply_interventions
    from refusal_lab.models import load_model
    from refusal_lab.pipeline.artifacts import chosen_stem

    out = tmp_path / "abliterated"
    result, text = invoke("abliterate", "--model", model_dir, "--run", run_dir, "--out", out, "--dtype", "float32")
    assert result.exit_code == 0, text
    ids = torch.tensor([[5, 20, 30, 40, 50]])
    lm = load_model(str(model_dir), dtype="float32")
    unit = load_artifact(chosen_stem(run_dir, "dim", "all")).unit
    everywhere = Intervention(Projection(unit[None, :]), layers=tuple(range(lm.n_layers)))
    with torch.no_grad(), apply_interventions(lm, [everywhere]):
        hooked = lm.model(input_ids=ids).logits
    edited = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no refusal-lab
    with torch.no_grad():
        torch.testing.assert_close(edited(input_ids=ids).logits, hooked, atol=2e-4, rtol=1e-4)


def test_models_lists_bundled():
    result, text = invoke("models")
    assert result.exit_code == 0 and "qwen2.5-coder-1.5b" in text and "default" in text
