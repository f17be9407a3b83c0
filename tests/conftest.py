"""Shared fixtures: tiny randomly initialised models of every supported architecture, with a character tokenizer.

No download ever happens: models are built from transformers configs, the tokenizer from a character vocabulary.
"""

from __future__ import annotations

import json

import os
import string

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch
import transformers
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from refusal_lab.models import wrap_model

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>", "[INST]", "[/INST]", "<start_of_turn>", "<end_of_turn>",
            "<|user|>", "<|end|>", "<|assistant|>"]
CHARS = list(string.printable)
VOCAB_SIZE = len(SPECIALS) + len(CHARS)

CONFIGS = {
    "llama": transformers.LlamaConfig,
    "mistral": transformers.MistralConfig,
    "qwen2": transformers.Qwen2Config,
    "qwen3": transformers.Qwen3Config,
    "gemma": transformers.GemmaConfig,
    "gemma2": transformers.Gemma2Config,
    "gemma3_text": transformers.Gemma3TextConfig,
    "phi3": transformers.Phi3Config,
}
ARCHITECTURES = tuple(CONFIGS)


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        bos_token="<bos>", unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS[4:]})
    return tokenizer


def tiny_model(model_type: str, seed: int = 0, dtype=torch.float32, n_layers: int = 3, device="cpu"):
    torch.manual_seed(seed)
    config = CONFIGS[model_type](
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    if model_type == "qwen2":
        config.tie_word_embeddings = True  # like the bundled Qwen2.5 models on the hub
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype)
    with torch.no_grad():  # random biases where a family has them, so bias edits are exercised
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.02)
    return wrap_model(model.to(device), char_tokenizer(), f"tiny-{model_type}")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is ~30x faster than two on a shared, loaded 2-core machine (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=ARCHITECTURES)
def tiny_lm(request):
    return tiny_model(request.param)


def invoke_cli(*args):
    """Run the typer app in-process; returns (result, output plus any exception text)."""
    from typer.testing import CliRunner

    from refusal_lab.cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    return result, result.output + (str(result.exception) if result.exception else "")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random qwen2 model and tokenizer saved as a plain transformers directory."""
    lm = tiny_model("qwen2")
    path = tmp_path_factory.mktemp("tiny-qwen2")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def described(name: str) -> dict:
    """What the planner records beside a fixture name (kind, scope, params, control), for the hand-built tables."""
    if name == "baseline":
        return {"intervention": name, "kind": "none", "scope": "", "params": "{}", "control": False}
    kind, inside = name.split("~")[0].split("[", 1)
    scope, *rest = inside.rstrip("]").split(",")
    params = {k: float(v) if v.lstrip("-").replace(".", "").isdigit() else v
              for k, v in (part.split("=", 1) for part in rest if "=" in part)}
    if "k" in params:
        params["k"] = int(params["k"])
    return {"intervention": name, "kind": kind, "scope": scope, "control": "~" in name,
            "params": json.dumps(params | ({"center": True} if "centered" in rest else {}))}
