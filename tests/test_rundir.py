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


# --- the real resume paths: extraction's stages on a tiny model ------------------------------------------------------

LOOSE = {"kl_threshold": 1e9, "induce_threshold": -1e9, "min_inlp_accuracy": 0.0, "scopes": ["all"], "finalists": 2}


def _run_config(**changes):
    return RunConfig(**{"n_train": 8, "n_val": 4, "batch_size": 8, "dtype": "float32",
                        "selection": SelectionConfig(**LOOSE), **changes})


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """Count extraction's work: train activations, fits saved (per fit) and selections (per method)."""
    from refusal_lab.pipeline import extraction

    monkeypatch.setenv("REFUSAL_LAB_CACHE", str(tmp_path / "cache"))
    calls = {"context": 0, "fits": [], "selections": []}
    real = {name: getattr(extraction, name) for name in ("fit_context", "save_candidates", "select_candidates")}

    def context(*args, **kwargs):
        calls["context"] += 1
        return real["fit_context"](*args, **kwargs)

    def save(root, candidates):
        calls["fits"].append(root.name)
        return real["save_candidates"](root, candidates)

    def select(lm, name, *args, **kwargs):
        calls["selections"].append(name)
        return real["select_candidates"](lm, name, *args, **kwargs)

    monkeypatch.setattr(extraction, "fit_context", context)
    monkeypatch.setattr(extraction, "save_candidates", save)
    monkeypatch.setattr(extraction, "select_candidates", select)
    return calls, real


def test_an_interrupted_fit_leaves_no_marker_and_reruns_while_finished_stages_are_skipped(lm, tmp_path, counted,
                                                                                         monkeypatch):
    from refusal_lab.pipeline import extraction
    from refusal_lab.pipeline.experiment import run_extract

    calls, real = counted
    run = tmp_path / "run"
    counting = extraction.save_candidates

    def dies_in_the_subspace_fit(root, candidates):
        calls["fits"].append(root.name)
        if root.name == "subspace":  # one candidate written, then the process dies
            key = next(iter(candidates))
            real["save_candidates"](root, {key: candidates[key]})
            raise KeyboardInterrupt
        return real["save_candidates"](root, candidates)

    monkeypatch.setattr(extraction, "save_candidates", dies_in_the_subspace_fit)
    with pytest.raises(KeyboardInterrupt):
        run_extract(lm, _run_config(), run, ["dim", "subspace"])
    rd = RunDirectory(run)
    assert all(rd.done(s) for s in ("splits", "activations", "fit-dim", "select-dim-all", "ranking"))
    assert not rd.done("fit-subspace") and not rd.done("extract")
    assert list((run / "methods" / "subspace" / "candidates").glob("*.json"))  # a file is there: not "finished"

    monkeypatch.setattr(extraction, "save_candidates", counting)
    calls.update(context=0, fits=[], selections=[])
    result = run_extract(lm, _run_config(), run, ["dim", "subspace"])
    assert calls == {"context": 1, "fits": ["subspace"], "selections": ["subspace"]}  # only what had not finished
    assert result.chosen[("subspace", "all")] is not None and rd.done("fit-subspace") and rd.done("extract")
    layers = result.chosen[("subspace", "all")].provenance.extra["layers"]
    assert layers == [layer for layer, _ in result.ranked][: len(layers)]  # stacked by the ranking read back
    record = rd.record("extract")
    assert json.loads((run / "manifest.json").read_text())["timings_s"]["extract"] == record["seconds"]

    calls.update(context=0, fits=[], selections=[])
    again = run_extract(lm, _run_config(), run, ["dim", "subspace"])  # everything finished: read back only
    assert calls == {"context": 0, "fits": [], "selections": []}
    assert rd.record("extract") == record  # the marker (and its timing) is not rewritten by a resume
    assert again.ranked == result.ranked and set(again.chosen) == set(result.chosen)


def test_an_interrupted_selection_is_not_read_back_even_with_its_files_written(lm, tmp_path, counted, monkeypatch):
    from refusal_lab.pipeline import extraction
    from refusal_lab.pipeline.artifacts import chosen_stem, load_chosen, selected_scopes
    from refusal_lab.pipeline.experiment import run_extract

    calls, _ = counted
    run = tmp_path / "run"
    real_save = extraction._save_selection

    def dies_after_writing(run_dir, selection, *args):
        real_save(run_dir, selection, *args)  # table and chosen artifact written
        raise RuntimeError("died before the stage finished")

    monkeypatch.setattr(extraction, "_save_selection", dies_after_writing)
    with pytest.raises(RuntimeError, match="died before"):
        run_extract(lm, _run_config(), run)
    assert chosen_stem(run, "dim", "all").with_suffix(".json").exists()
    assert (run / "methods" / "dim" / "selection-all.csv").exists()
    assert selected_scopes(run, "dim") == [] and load_chosen(run, "dim", "all") is None
    with pytest.raises(RefusalLabError, match="stage 'select-dim-all' has not finished"):
        RunDirectory(run).require("select-dim-all", "refusal-lab extract")

    monkeypatch.setattr(extraction, "_save_selection", real_save)
    calls.update(context=0, fits=[], selections=[])
    result = run_extract(lm, _run_config(), run)
    assert calls == {"context": 1, "fits": [], "selections": ["dim"]}  # the fit finished: kept; the selection redone
    assert selected_scopes(run, "dim") == ["all"] and RunDirectory(run).done("ranking")
    assert load_chosen(run, "dim", "all").provenance.layer == result.chosen[("dim", "all")].provenance.layer


def test_a_changed_setting_is_refused_naming_it_before_any_work(lm, tmp_path, counted):
    from refusal_lab.pipeline.experiment import run_extract

    calls, _ = counted
    run_extract(lm, _run_config(), tmp_path / "run")
    calls.update(context=0, fits=[], selections=[])
    with pytest.raises(RefusalLabError) as caught:
        run_extract(lm, _run_config(n_val=5), tmp_path / "run")
    assert str(caught.value) == (f"{tmp_path / 'run'} was created with config n_val = 4, not 5: use the same settings "
                                 "to resume, or a new --out")
    with pytest.raises(RefusalLabError, match="was created for model tiny-qwen2"):
        run_extract(tiny_model("qwen2", seed=1), _run_config(), tmp_path / "run")
    assert calls == {"context": 0, "fits": [], "selections": []}
