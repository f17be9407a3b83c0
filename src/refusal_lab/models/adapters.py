"""Architecture adapters: where a decoder-only chat model keeps the modules refusal-lab hooks and edits.

Every supported family stores its decoder layers at ``model.model.layers``. A layer *writes* to the residual
stream twice: the attention block's output and the MLP block's output. For Gemma2/Gemma3 those writes pass
through post-sublayer norms (``post_attention_layernorm`` / ``post_feedforward_layernorm``), so the writer modules
are the norms; elsewhere they are ``self_attn`` and ``mlp``. The linear maps that produce the writes
(``o_proj``, ``down_proj``) are what weight orthogonalization edits.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from refusal_lab.core.errors import RefusalLabError

_SENTINEL = "\u2063INSTRUCTION\u2063"

CHATML = "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"
LLAMA3 = "<|start_header_id|>user<|end_header_id|>\n\n{instruction}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
INST = "[INST] {instruction} [/INST]"
GEMMA = "<start_of_turn>user\n{instruction}<end_of_turn>\n<start_of_turn>model\n"
PHI3 = "<|user|>\n{instruction}<|end|>\n<|assistant|>\n"


@dataclass(frozen=True)
class Adapter:
    """Model-family knowledge: module paths, chat formatting, post-instruction positions, refusal tokens."""

    family: str
    model_types: tuple[str, ...]
    fallback_template: str
    refusal_strings: tuple[str, ...] = ("I",)
    post_sublayer_norms: bool = False

    # -- modules -------------------------------------------------------------------------------------------
    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.model.layers

    def embedding(self, model: nn.Module) -> nn.Embedding:
        return model.get_input_embeddings()

    def attn_writer(self, layer: nn.Module) -> nn.Module:
        """The module whose output is added to the residual stream by the attention block."""
        return layer.post_attention_layernorm if self.post_sublayer_norms else layer.self_attn

    def mlp_writer(self, layer: nn.Module) -> nn.Module:
        """The module whose output is added to the residual stream by the MLP block."""
        return layer.post_feedforward_layernorm if self.post_sublayer_norms else layer.mlp

    def attn_out_proj(self, layer: nn.Module) -> nn.Linear:
        return layer.self_attn.o_proj

    def mlp_out_proj(self, layer: nn.Module) -> nn.Linear:
        return layer.mlp.down_proj

    # -- chat formatting -------------------------------------------------------------------------------------
    def format_prompt(self, tokenizer, instruction: str) -> str:
        """The chat-formatted prompt for one user turn, ending where the assistant's reply starts."""
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": instruction}],
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=False,  # Qwen3: no <think> turn; other templates ignore it
            )
        return self.fallback_template.format(instruction=instruction)

    def post_instruction_suffix(self, tokenizer) -> str:
        """The template text after the user's instruction (e.g. ``<|im_end|>\\n<|im_start|>assistant\\n``)."""
        rendered = self.format_prompt(tokenizer, _SENTINEL)
        return rendered.split(_SENTINEL, 1)[1]

    def n_post_instruction_tokens(self, tokenizer) -> int:
        """How many tokens follow the instruction; with left padding they are the last positions of every row."""
        return len(tokenizer(self.post_instruction_suffix(tokenizer), add_special_tokens=False)["input_ids"])

    def refusal_token_ids(self, tokenizer) -> list[int]:
        """First-token ids of the family's refusal openings (Arditi et al.: "I", and "As" for Qwen)."""
        ids = []
        for text in self.refusal_strings:
            token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if token_ids and token_ids[0] not in ids:
                ids.append(token_ids[0])
        return ids


ADAPTERS: tuple[Adapter, ...] = (
    Adapter("llama", ("llama",), LLAMA3),  # Llama-2/3 and Yi; the tokenizer's own template wins when present
    Adapter("mistral", ("mistral",), INST),
    Adapter("qwen2", ("qwen2",), CHATML, refusal_strings=("I", "As")),
    Adapter("qwen3", ("qwen3",), CHATML, refusal_strings=("I", "As")),
    Adapter("gemma", ("gemma",), GEMMA),
    Adapter("gemma2", ("gemma2",), GEMMA, post_sublayer_norms=True),
    Adapter("gemma3", ("gemma3_text",), GEMMA, post_sublayer_norms=True),
    Adapter("phi3", ("phi3",), PHI3),
)
SUPPORTED_MODEL_TYPES = tuple(t for a in ADAPTERS for t in a.model_types)


def adapter_for(model_type: str) -> Adapter:
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise RefusalLabError(
        f"unsupported architecture {model_type!r}; supported model types are {', '.join(SUPPORTED_MODEL_TYPES)}"
    )
