"""Device maps (issue 22, "models larger than one device"), tested on the CPU.

A tiny random qwen2 (tied embeddings; weights scaled up so greedy tokens vary) is saved as a model directory and
loaded twice: on one device, and with a device map that keeps the embeddings, layer 0, the final norm and the head
in memory and offloads layers 1 and 2 to "disk" (accelerate hooks read their weights in from the checkpoint for
each forward). Every number the toolkit computes — activations, hooked logits, batched candidate scores, a
norm-preserving abliteration's hooks, greedy tokens, the weights hash — must be the same. Weight edits of offloaded
weights are refused with the fix; an in-memory dispatch (accelerate's hooks forced on, every module on "cpu") edits
them on each module's own device with the same result as the one-device edit.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from conftest import invoke_cli, tiny_model
from refusal_lab.core.errors import RefusalLabError
from refusal_lab.evaluation.generate import generate_ids
from refusal_lab.interventions.base import Projection
from refusal_lab.interventions.batched import batched_scores
from refusal_lab.interventions.hooks import Intervention
from refusal_lab.interventions.scoring import last_token_logprobs
from refusal_lab.interventions.weights import orthogonalize_weights
from refusal_lab.models.activations import collect_activations
from refusal_lab.models.identity import weights_hash
from refusal_lab.models.load import load_model
from refusal_lab.models.placement import offloaded_modules, parse_device_map
from refusal_lab.pipeline.experiment import load_config
from refusal_lab.search.edit import Abliteration

DISK_MAP = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
            "model.layers.1": "disk", "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "cpu"}
PROMPTS = ["hello there", "how do I bake bread", "x", "write a poem about the sea"]


@pytest.fixture(scope="module")
def varied_dir(tmp_path_factory):
    """A tiny qwen2 whose weights (but the norms') are scaled ×8, so greedy tokens differ from step to step."""
    lm = tiny_model("qwen2")
    with torch.no_grad():
        for name, param in lm.model.named_parameters():
            if "norm" not in name:
                param.mul_(8)
    path = tmp_path_factory.mktemp("tiny-qwen2-varied")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pair(varied_dir, one_thread):
    """(one device, disk-offloaded) loads of the same directory."""
    return (load_model(str(varied_dir), dtype="float32"),
            load_model(str(varied_dir), dtype="float32", device_map=json.dumps(DISK_MAP)))


def _unit(seed: int, k: int = 1) -> torch.Tensor:
    basis, _ = torch.linalg.qr(torch.randn(64, k, generator=torch.Generator().manual_seed(seed)))
    return basis.T.contiguous()  # [k, d], orthonormal rows


def test_parse_device_map_reads_strategies_json_and_files(tmp_path):
    assert parse_device_map(None) is None and parse_device_map("") is None and parse_device_map("none") is None
    assert parse_device_map("auto") == "auto" and parse_device_map("balanced_low_0") == "balanced_low_0"
    assert parse_device_map('{"model.layers.0": 0, "lm_head": "cpu"}') == {"model.layers.0": 0, "lm_head": "cpu"}
    as_json = tmp_path / "map.json"
    as_json.write_text(json.dumps(DISK_MAP))
    assert parse_device_map(str(as_json)) == DISK_MAP
    as_toml = tmp_path / "map.toml"
    as_toml.write_text('[device_map]\n"model.layers.0" = 1\n"model.layers.1" = "cuda:0"\nlm_head = "disk"\n')
    assert parse_device_map(str(as_toml)) == {"model.layers.0": 1, "model.layers.1": "cuda:0", "lm_head": "disk"}


@pytest.mark.parametrize("value, problem", [
    ('{"model.layers.0": 0,', "not valid JSON"),
    ('{"model.layers.0": "gpu7"}', "not a device"),
    ('{"model.layers.0": -1}', "indices start at 0"),
    ('{"model.layers.0": "meta"}', "holds no weights"),
    ('{"model.layers.0": true}', "is placed on True"),
    ("/nonexistent/map.json", "neither a strategy"),
    ("{}", "expected a strategy"),
])
def test_a_bad_device_map_is_one_line_naming_the_problem(value, problem):
    with pytest.raises(RefusalLabError, match=problem):
        parse_device_map(value)


def test_the_run_config_checks_its_device_map_when_read(tmp_path):
    assert load_config(None, device_map="auto").device_map == "auto"
    with pytest.raises(RefusalLabError, match=r"--device-map: device_map = .*not a device"):
        load_config(None, device_map='{"model.layers.0": "gpu7"}')
    config = tmp_path / "run.toml"
    config.write_text('dtype = "float32"\noffload_folder = "/tmp/x"\n[device_map]\n"model.layers.0" = 0\nlm_head = "disk"\n')
    loaded = load_config(config)
    assert loaded.device_map == {"model.layers.0": 0, "lm_head": "disk"} and loaded.offload_folder == "/tmp/x"
    config.write_text('[device_map]\n"model.layers.0" = "tpu:x"\n')
    with pytest.raises(RefusalLabError, match=r"run\.toml: device_map = .*not a device"):
        load_config(config)


def test_offloaded_load_is_dispatched_and_hashes_like_one_device(pair):
    plain, mapped = pair
    assert plain.device_map is None and offloaded_modules(plain.model) == []
    assert mapped.device_map == DISK_MAP and mapped.device == torch.device("cpu")
    offloaded = offloaded_modules(mapped.model)
    assert "model.layers.1.self_attn.o_proj" in offloaded and "model.layers.2.mlp.down_proj" in offloaded
    assert not any(name.startswith("model.layers.0") for name in offloaded)
    assert mapped.model.model.layers[1].mlp.down_proj.weight.device.type == "meta"  # not held in memory
    assert weights_hash(mapped.model) == weights_hash(plain.model)


def test_activations_are_gathered_to_the_host_and_equal_one_device(pair):
    plain, mapped = pair
    ours = collect_activations(mapped, PROMPTS, batch_size=2, use_cache=False)
    reference = collect_activations(plain, PROMPTS, batch_size=2, use_cache=False)
    assert ours.acts.device.type == "cpu" and ours.acts.shape == reference.acts.shape
    assert torch.allclose(ours.acts, reference.acts, atol=1e-6)
    assert torch.allclose(ours.mean, reference.mean, atol=1e-9)


def test_an_ablation_hook_on_offloaded_layers_equals_one_device(pair):
    plain, mapped = pair
    ablate = [Intervention(Projection(_unit(1)), layers=(0, 1, 2), name="ablate")]
    hooked = last_token_logprobs(mapped, PROMPTS, ablate)
    assert torch.allclose(hooked, last_token_logprobs(plain, PROMPTS, ablate), atol=1e-5)
    assert (hooked - last_token_logprobs(mapped, PROMPTS)).abs().max() > 1e-3  # the hook did act


def test_batched_candidate_scores_equal_one_device(pair):
    """Selection and the search score candidates side by side (PerCandidate blocks) on the offloaded layers."""
    plain, mapped = pair
    candidates = [[Intervention(Projection(_unit(seed)), layers=(0, 1, 2))] for seed in range(3)]
    base = last_token_logprobs(plain, PROMPTS)
    scores, kl = batched_scores(mapped, PROMPTS, candidates, base, rows_per_pass=8)
    want_scores, want_kl = batched_scores(plain, PROMPTS, candidates, base, rows_per_pass=8)
    assert torch.allclose(scores, want_scores, atol=1e-4) and torch.allclose(kl, want_kl, atol=1e-5)


def test_norm_preserving_hooks_read_offloaded_weights(pair):
    """The hooks of a norm-preserving edit are built from the writers' weights: read in from the disk offload."""
    plain, mapped = pair
    edit = Abliteration(_unit(2).expand(3, -1).clone(), {"attn": torch.tensor([0.5, 1.0, 0.7]),
                                                          "mlp": torch.tensor([1.0, 0.2, 0.9])},
                        norm_preserving=True)
    ours = last_token_logprobs(mapped, PROMPTS, edit.interventions(lm=mapped))
    assert torch.allclose(ours, last_token_logprobs(plain, PROMPTS, edit.interventions(lm=plain)), atol=1e-5)


def test_greedy_tokens_are_identical_with_and_without_hooks(pair):
    plain, mapped = pair
    ablate = [Intervention(Projection(_unit(1)), layers=(0, 1, 2))]
    for interventions in ([], ablate):
        ours = generate_ids(mapped, PROMPTS, interventions, max_new_tokens=8, batch_size=2)
        assert ours == generate_ids(plain, PROMPTS, interventions, max_new_tokens=8, batch_size=2)
    assert len({tuple(ids) for ids in ours}) > 1 and len(set(ours[1])) > 2  # varied, not one repeated token


def test_weight_edits_of_offloaded_weights_are_refused_with_the_fix(pair):
    _, mapped = pair
    with pytest.raises(RefusalLabError, match=r"model\.layers\.1\.self_attn\.o_proj.* offloaded by the device map.*"
                                              r"apply the same projection with hooks"):
        orthogonalize_weights(mapped, Projection(_unit(1)))
    edit = Abliteration(_unit(1).expand(3, -1).clone(), {"attn": torch.ones(3), "mlp": torch.ones(3)})
    with pytest.raises(RefusalLabError, match="the abliteration edits weights in place"):
        edit.apply_to_weights(mapped)


def test_weight_edit_on_an_in_memory_dispatch_equals_one_device(varied_dir, one_thread):
    """Every module on "cpu" with accelerate's hooks forced on: the edit runs module by module on each module's
    device and gives the logits of the one-device edit (and of the hooked model, the edit's definition)."""
    from accelerate import dispatch_model

    basis = _unit(3, k=2)
    plain = load_model(str(varied_dir), dtype="float32")
    hooked = last_token_logprobs(plain, PROMPTS, [Intervention(Projection(basis), layers=(0, 1, 2))])
    orthogonalize_weights(plain, Projection(basis))
    mapped = load_model(str(varied_dir), dtype="float32")
    dispatch_model(mapped.model, {name: "cpu" for name in DISK_MAP}, force_hooks=True)
    assert hasattr(mapped.model.model.layers[1].self_attn.o_proj, "_hf_hook")  # the hooks machinery is in place
    orthogonalize_weights(mapped, Projection(basis))
    edited = last_token_logprobs(mapped, PROMPTS)
    assert torch.allclose(edited, last_token_logprobs(plain, PROMPTS), atol=1e-5)
    assert torch.allclose(edited, hooked, atol=1e-4)


def test_extract_with_a_device_map_selects_what_one_device_selects(varied_dir, tmp_path, monkeypatch):
    """The CLI's --device-map: extraction and selection on the offloaded model write the same direction and
    selection table; the run directory made on one device accepts a rerun with the map (placement is not part of
    its fingerprint)."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"n_train": 8, "n_val": 4, "batch_size": 8, "dtype": "float32",
                                  "selection": {"kl_threshold": 1e9, "induce_threshold": -1e9,
                                                "scopes": ["layer"]}}))
    map_file = tmp_path / "map.json"
    map_file.write_text(json.dumps(DISK_MAP))
    runs = {}
    for label, extra in (("plain", []), ("mapped", ["--device-map", map_file])):
        monkeypatch.setenv("REFUSAL_LAB_CACHE", str(tmp_path / f"cache-{label}"))  # no activations shared
        runs[label] = tmp_path / label
        result, text = invoke_cli("extract", "--model", varied_dir, "--out", runs[label], "--config", config, *extra)
        assert result.exit_code == 0, text
    from safetensors.torch import load_file

    chosen = {label: sorted((run / "methods" / "dim").rglob("*.safetensors")) for label, run in runs.items()}
    assert chosen["plain"] and [p.name for p in chosen["plain"]] == [p.name for p in chosen["mapped"]]
    for a, b in zip(chosen["plain"], chosen["mapped"]):
        for key, tensor in load_file(str(a)).items():
            assert torch.allclose(tensor, load_file(str(b))[key], atol=1e-5), (a.name, key)
    tables = {label: sorted((run / "methods" / "dim").rglob("*.csv")) for label, run in runs.items()}
    assert tables["plain"] and len(tables["plain"]) == len(tables["mapped"])
    for a, b in zip(tables["plain"], tables["mapped"]):  # every candidate's bypass, induce and KL; the same pick
        pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b), check_exact=False, rtol=1e-4, atol=1e-6)
    assert json.loads((runs["plain"] / "fingerprint.json").read_text()) == \
        json.loads((runs["mapped"] / "fingerprint.json").read_text())
    result, text = invoke_cli("extract", "--model", varied_dir, "--out", runs["plain"], "--device-map", map_file)
    assert result.exit_code == 0, text
    # abliterate reads the run's config, map included: the offloaded weights are refused, "none" loads one device
    result, text = invoke_cli("abliterate", "--run", runs["mapped"], "--out", tmp_path / "edited", "--dtype", "float32")
    assert result.exit_code != 0 and "offloaded by the device map" in text
    result, text = invoke_cli("abliterate", "--run", runs["mapped"], "--out", tmp_path / "edited", "--dtype", "float32",
                              "--device-map", "none")
    assert result.exit_code == 0, text


def test_an_offload_folder_without_a_device_map_and_maps_that_cannot_be_placed_are_one_line(varied_dir, tmp_path):
    with pytest.raises(RefusalLabError, match="offload_folder is only used with a device map"):
        load_model(str(varied_dir), dtype="float32", offload_folder=str(tmp_path / "offload"))
    if not torch.cuda.is_available():
        with pytest.raises(RefusalLabError, match=r"places 'model.layers.0' on cuda:0, but this machine has 0 CUDA"):
            load_model(str(varied_dir), dtype="float32", device_map={"model.layers.0": 0, "lm_head": "cpu"})
    with pytest.raises(RefusalLabError, match=r"names module\(s\) model.nothing that the model lacks"):
        load_model(str(varied_dir), dtype="float32", device_map={"model.layers.0": "cpu", "model.nothing": "cpu"})
