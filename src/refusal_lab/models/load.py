"""Load a chat model by bundled name, Hugging Face id, local directory or local ``.gguf`` file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.models.adapters import Adapter, adapter_for
from refusal_lab.models.bundled import BUNDLED, cache_dir, convert_gguf, ensure_cached
from refusal_lab.models.contexts import DEFAULT, ChatContext, get_context
from refusal_lab.models.placement import (
    check_devices_exist,
    check_module_names,
    execution_device,
    parse_device_map,
)

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    """A model, its tokenizer (left padding), its architecture adapter and the chat context prompts are formatted in.

    Every path that formats prompts (activations, first-token scores, generation, the shared-prefix cache,
    perplexity of responses) goes through :meth:`format` / :meth:`tokenize`, so a view under another context,
    :meth:`in_context`, scores every one of them under it."""

    name: str
    model: nn.Module
    tokenizer: object
    adapter: Adapter
    source: str = ""
    extra: dict = field(default_factory=dict)
    context: ChatContext = DEFAULT

    @property
    def n_layers(self) -> int:
        return len(self.adapter.layers(self.model))

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embedding's execution device (with a device map, accelerate moves every
        later module's inputs to its own device)."""
        return execution_device(self.model.get_input_embeddings())

    @property
    def device_map(self) -> dict[str, int | str] | None:
        """The module → device placement accelerate dispatched (None: the model was not dispatched)."""
        return getattr(self.model, "hf_device_map", None)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @cached_property
    def n_post_instruction(self) -> int:
        return self.adapter.n_post_instruction_tokens(self.tokenizer, self.context)

    def in_context(self, context: ChatContext | str) -> LoadedModel:
        """This model (the same weights, tokenizer and hooks) formatting prompts under ``context`` (a
        :class:`ChatContext` or a registered name, :data:`~refusal_lab.models.contexts.CONTEXTS`)."""
        return replace(self, context=get_context(context))

    @cached_property
    def context_key(self) -> str:
        """What tells this context's prompts apart in a results store: "" where they render as under the default
        context (so stored results stay valid), else 16 hex digits of the rendered template."""
        probe = "\u2063KEY\u2063"
        rendered = self.format([probe])[0]
        if rendered == self.adapter.format_prompt(self.tokenizer, probe, DEFAULT):
            return ""
        return hashlib.sha256(rendered.encode()).hexdigest()[:16]

    @cached_property
    def refusal_token_ids(self) -> list[int]:
        return self.adapter.refusal_token_ids(self.tokenizer)

    def format(self, instructions: list[str]) -> list[str]:
        return self.adapter.format_prompts(self.tokenizer, list(instructions), self.context)

    def tokenize(self, instructions: list[str]) -> dict[str, torch.Tensor]:
        """Chat-format and tokenize with left padding: row ends align, so position −1 is the last prompt token."""
        batch = self.tokenizer(self.format(instructions), return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.device) for k, v in batch.items()}


def _prepare_tokenizer(tokenizer) -> None:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def wrap_model(model: nn.Module, tokenizer, name: str, source: str = "") -> LoadedModel:
    """Wrap an already-built transformers model (e.g. a tiny random one in tests)."""
    _prepare_tokenizer(tokenizer)
    model.eval()
    return LoadedModel(name, model, tokenizer, adapter_for(model.config.model_type), source or name)


def _gguf_cache_dir(path: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{path.stem}-{key}"


def resolve_model_dir(spec: str) -> tuple[str, str]:
    """Map a model spec to (name, transformers path or hub id), converting bundled / GGUF models once."""
    if spec in BUNDLED:
        return spec, str(ensure_cached(BUNDLED[spec]))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise RefusalLabError(f"GGUF file {path} does not exist")
        target = _gguf_cache_dir(path)
        if not (target / "config.json").exists():
            convert_gguf(path, target, path.stem)
        return path.stem, str(target)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise RefusalLabError(f"{path} is a directory but has no config.json; point --model at a model directory")
        return path.name, str(path)
    if spec.startswith(("/", ".", "~")):
        raise RefusalLabError(f"model path {spec} does not exist")
    return spec, spec


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 matmuls natively on this CPU (AVX512-BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def default_dtype(device: str) -> str:
    """bfloat16 on GPU, and on CPUs with native bf16 matmul (AVX512-BF16 / AMX); float32 on other CPUs.

    Measured (docs/conventions.md, "Speed on a 2-core CPU"): with AVX512-BF16 a bf16 ``linear`` ran 3.3× and a
    0.5B forward 1.9× faster than float32; on an AVX2-only CPU bf16 ran ~10× slower (3.7 against 38 tokens/s on the
    1.5B)."""
    if torch.device(device).type != "cpu" or cpu_has_native_bf16():
        return "bfloat16"
    return "float32"


def _placement(device_map, offload_folder: str | None) -> dict:
    """``from_pretrained`` keyword arguments for a device map (none without one: the caller moves the model)."""
    parsed = parse_device_map(device_map)
    if parsed is None:
        if offload_folder is not None:
            raise RefusalLabError("offload_folder is only used with a device map that offloads to disk; set "
                                  "device_map too (e.g. --device-map auto) or drop offload_folder")
        return {}
    check_devices_exist(parsed)
    placement = {"device_map": parsed}
    if offload_folder is not None:
        Path(offload_folder).expanduser().mkdir(parents=True, exist_ok=True)
        placement["offload_folder"] = str(Path(offload_folder).expanduser())
    return placement


def load_model(spec: str, dtype: str = "auto", device: str = "cpu", device_map=None,
               offload_folder: str | None = None) -> LoadedModel:
    """Load ``spec``: a bundled name (see ``refusal-lab models``), a HF id, a model directory or a ``.gguf`` file.

    ``dtype="auto"`` picks :func:`default_dtype` for the device (for the first accelerator with a device map).
    ``device_map`` (:mod:`refusal_lab.models.placement`: a strategy, a dict, a JSON string or a file) places the
    modules through accelerate instead of moving the whole model to ``device``; ``offload_folder`` is where weights
    placed on ``"disk"`` are written when they cannot be read from the checkpoint in place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a seconds-long weight load needs no bar; our own stages show progress
    placement = _placement(device_map, offload_folder)
    if placement and dtype == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = default_dtype(device) if dtype == "auto" else dtype
    if dtype not in DTYPES:
        raise RefusalLabError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    name, location = resolve_model_dir(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=DTYPES[dtype], **placement)
    except OSError as error:
        raise RefusalLabError(
            f"could not load model {spec!r}: it is not a bundled model ({', '.join(BUNDLED)}), a local directory "
            f"or .gguf file, and the Hugging Face hub could not provide it ({str(error).splitlines()[0]})"
        ) from None
    except (ValueError, KeyError) as error:
        if not placement:
            raise
        raise RefusalLabError(f"could not place model {spec!r} with device map {device_map!r}: "
                              f"{str(error).splitlines()[0]}") from None
    if not placement:
        model = model.to(device)
    else:
        check_module_names(model, placement["device_map"])
    return wrap_model(model, tokenizer, name, source=location)
