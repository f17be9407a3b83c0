"""RunDirectory: a fingerprint that catches another model, data or config; stage markers only for finished stages."""

import copy
import hashlib
import json

import pytest
import torch
from conftest import tiny_model

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.models.identity import BLOCK_SIZE, WEIGHT_BLOCKS, weights_hash
from refusal_lab.pipeline.experiment import RunConfig
from refusal_lab.pipeline.rundir import RunDirectory
from refusal_lab.selection.select import SelectionConfig


@pytest.fixture(scope="module")
def lm():
    return tiny_model("qwen2", seed=0)


def test_weights_hash_matches_its_definition(lm):
    digest, sampled = hashlib.sha256(), 0
    for name, param in lm.model.named_parameters():
        flat = param.detach().flatten()
        n = flat.numel()
        if n > WEIGHT_BLOCKS * BLOCK_SIZE:  # runs of BLOCK_SIZE values at evenly spaced starts, the last at the end
            starts = [i * (n - BLOCK_SIZE) // (WEIGHT_BLOCKS - 1) for i in range(WEIGHT_BLOCKS)]
            flat = torch.cat([flat[s:s + BLOCK_SIZE] for s in starts])
            sampled += 1
        digest.update(f"{name}:{tuple(param.shape)}\n".encode())
        digest.update(flat.to(torch.bfloat16).float().numpy().tobytes())  # rounded: bf16 and fp32 loads agree
    assert sampled > 0  # the tiny model has tensors large enough to be sampled
    assert weights_hash(lm.model) == digest.hexdigest()[:16]


def test_same_architecture_and_hidden_size_with_other_weights_differ(lm):
    other = tiny_model("qwen2", seed=1)
    assert other.hidden_size == lm.hidden_size and other.name == lm.name
    assert weights_hash(other.model) != weights_hash(lm.model)
    assert weights_hash(tiny_model("qwen2", seed=0).model) == weights_hash(lm.model)


def test_one_edited_value_on_the_grid_changes_the_hash_and_a_lossless_cast_does_not(lm):
    edited = copy.deepcopy(lm.model)
    with torch.no_grad():
        edited.model.layers[1].mlp.down_proj.weight[-1, -1] += 0.05  # the last flat index is always sampled
    assert weights_hash(edited) != weights_hash(lm.model)
    bf16 = copy.deepcopy(lm.model).to(torch.bfloat16)
    assert weights_hash(copy.deepcopy(bf16).float()) == weights_hash(bf16)
    assert weights_hash(bf16) == weights_hash(lm.model)  # values are compared at bf16 precision: a run made in
    # float32 accepts the same weights loaded in bfloat16 (generate, abliterate in another dtype)


def test_fingerprint_is_stored_when_first_known_and_names_the_model_that_differs(lm, tmp_path):
    config = RunConfig(n_train=8)
    rd = RunDirectory(tmp_path / "run")
    rd.bind(config=config, data_hash="d1")  # before loading the model
    assert set(rd.fingerprint()) == {"config", "data_hash"}
    rd.bind(lm=lm)
    stored = json.loads((tmp_path / "run" / "fingerprint.json").read_text())
    assert stored["model"] == {"name": "tiny-qwen2", "source": "tiny-qwen2", "weights": weights_hash(lm.model),
                               "dtype": "float32"}
    assert stored["config"]["n_train"] == 8 and stored["data_hash"] == "d1"

    resumed = RunDirectory(tmp_path / "run")  # a later command: same everything passes
    resumed.bind(lm=lm, data_hash="d1", config=RunConfig(n_train=8))
    other = tiny_model("qwen2", seed=1)
    with pytest.raises(RefusalLabError) as caught:
        resumed.check(lm=other)
    message = str(caught.value)
    assert f"weights {weights_hash(lm.model)}), not tiny-qwen2 (weights {weights_hash(other.model)})" in message
    assert "use a new --out" in message and "\n" not in message
    assert json.loads((tmp_path / "run" / "fingerprint.json").read_text()) == stored  # a failed bind stores nothing


def test_the_same_weights_in_another_dtype_are_named_as_a_dtype_change(tmp_path):
    bf16 = tiny_model("qwen2", seed=0, dtype=torch.bfloat16)
    rd = RunDirectory(tmp_path)
    rd.bind(lm=bf16)
    fp32 = copy.copy(bf16)
    fp32.model = copy.deepcopy(bf16.model).float()  # lossless: the weights hash is unchanged
    with pytest.raises(RefusalLabError, match=r"with model tiny-qwen2 in bfloat16, not float32: set dtype"):
        rd.check(lm=fp32)
    rd.check(lm=fp32, same_dtype=False)  # a command that only reads the run's artifacts


def test_same_weights_under_another_name_pass(lm, tmp_path):
    rd = RunDirectory(tmp_path)
    rd.bind(lm=lm)
    renamed = copy.copy(lm)
    renamed.name, renamed.source = "qwen2-local-copy", "/models/qwen2"
    rd.check(lm=renamed)


def test_changed_config_or_data_names_the_field(tmp_path):
    rd = RunDirectory(tmp_path)
    rd.bind(config=RunConfig(n_val=5), data_hash="abc")
    with pytest.raises(RefusalLabError) as caught:
        rd.check(config=RunConfig(n_val=5, selection=SelectionConfig(mode="exhaustive")))
    assert "created with config selection.mode = 'fast', not 'exhaustive'" in str(caught.value)
    with pytest.raises(RefusalLabError) as caught:
        rd.check(config=RunConfig(seed=1))
    assert "n_val = 5, not 64; seed = 0, not 1" in str(caught.value)
    with pytest.raises(RefusalLabError, match="created for data abc, not abd"):
        rd.bind(data_hash="abd")
    rd.check(config=RunConfig(n_val=5), data_hash="abc")
    rd.check()  # nothing given: nothing compared


def test_a_file_is_not_a_run_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RefusalLabError, match="is a file, not a run directory"):
        RunDirectory(tmp_path / "f")


def test_stage_marker_only_when_the_body_finishes(tmp_path):
    rd = RunDirectory(tmp_path)
    with pytest.raises(RuntimeError):
        with rd.stage("select"):
            (tmp_path / "selection.csv").write_text("half")
            raise RuntimeError("died mid-stage")
    assert not rd.done("select") and rd.record("select") is None
    assert (tmp_path / "selection.csv").exists()  # an output is there, but the stage does not count as finished
    with pytest.raises(RefusalLabError, match="stage 'select' has not finished"):
        rd.require("select", "refusal-lab extract")
    with rd.stage("select") as info:
        info["chosen"] = [3, -1]
    record = RunDirectory(tmp_path).record("select")  # a later process sees it
    assert record["stage"] == "select" and record["info"] == {"chosen": [3, -1]} and record["seconds"] >= 0
    rd.require("select")
    assert sorted(p.name for p in (tmp_path / "stages").iterdir()) == ["select.done"]  # no temporary file left


def test_a_finished_stage_rerun_and_interrupted_counts_as_unfinished(tmp_path):
    rd = RunDirectory(tmp_path)
    with rd.stage("evaluate"):
        pass
    assert rd.done("evaluate")
    with pytest.raises(KeyboardInterrupt):
        with rd.stage("evaluate"):
            assert not rd.done("evaluate")  # the old marker is gone while the stage runs again
            raise KeyboardInterrupt
    assert not rd.done("evaluate")
    with rd.stage("evaluate"):
        pass
    assert rd.done("evaluate") and not rd.done("select")


def test_stage_names_are_plain(tmp_path):
    with pytest.raises(ValueError, match="stage name"):
        RunDirectory(tmp_path).done("../escape")
