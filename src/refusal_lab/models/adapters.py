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
from refusal_lab.models.contexts import DEFAULT, ChatContext, render

_SENTINEL = "\u2063INSTRUCTION\u2063"

CHATML = "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"
LLAMA3 = "<|start_header_id|>user<|end_header_id|>\n\n{instruction}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
INST = "[INST] {instruction} [/INST]"
GEMMA = "<start_of_turn>user\n{instruction}<end_of_turn>\n<start_of_turn>model\n"
PHI3 = "<|user|>\n{instruction}<|end|>\n<|assistant|>\n"

# The same formats as chat templates, for tokenizers without one: one user turn renders exactly as above; a system
# turn where the family has one (ChatML, Llama 3, Phi-3), else the template raises on it as Gemma's and Mistral's do
# (so a system prompt is folded into the first user turn, refusal_lab.models.contexts).
_NO_SYSTEM = "{% if m['role'] == 'system' %}{{ raise_exception('this template has no system role') }}{% endif %}"
_GENERATE = "{% if add_generation_prompt %}{{ '"
CHATML_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
                   "{% endfor %}" + _GENERATE + "<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3_TEMPLATE = ("{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + "
                   "m['content'] + '<|eot_id|>' }}{% endfor %}" + _GENERATE +
                   "<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
INST_TEMPLATE = ("{% for m in messages %}" + _NO_SYSTEM + "{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + "
                 "' [/INST]' }}{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}")
GEMMA_TEMPLATE = ("{% for m in messages %}" + _NO_SYSTEM + "{{ '<start_of_turn>' + ('model' if m['role'] == "
                  "'assistant' else m['role']) + '\\n' + m['content'] + '<end_of_turn>\\n' }}{% endfor %}" +
                  _GENERATE + "<start_of_turn>model\\n' }}{% endif %}")
PHI3_TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}" +
                 _GENERATE + "<|assistant|>\\n' }}{% endif %}")


@dataclass(frozen=True)
class Adapter:
    """Model-family knowledge: module paths, chat formatting, post-instruction positions, refusal tokens."""

    family: str
    model_types: tuple[str, ...]
    fallback_template: str  # a chat template (jinja) for tokenizers without one
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
    def chat_template(self, tokenizer) -> str | None:
        """The template prompts are rendered with: None (the tokenizer's own) or the family's fallback."""
        return None if getattr(tokenizer, "chat_template", None) else self.fallback_template

    def format_prompts(self, tokenizer, instructions: list[str], context: ChatContext = DEFAULT) -> list[str]:
        """The chat-formatted prompts, each ``instruction`` the last user turn of ``context`` (default: one user turn
        under the template's default system prompt), ending where the assistant's reply starts."""
        return render(tokenizer, self.chat_template(tokenizer), context, list(instructions))

    def format_prompt(self, tokenizer, instruction: str, context: ChatContext = DEFAULT) -> str:
        """:meth:`format_prompts` for one instruction."""
        return self.format_prompts(tokenizer, [instruction], context)[0]

    def post_instruction_suffix(self, tokenizer, context: ChatContext = DEFAULT) -> str:
        """The template text after the user's instruction (e.g. ``<|im_end|>\\n<|im_start|>assistant\\n``)."""
        rendered = self.format_prompt(tokenizer, _SENTINEL, context)
        return rendered.split(_SENTINEL, 1)[1]

    def n_post_instruction_tokens(self, tokenizer, context: ChatContext = DEFAULT) -> int:
        """How many tokens follow the instruction; with left padding they are the last positions of every row."""
        suffix = self.post_instruction_suffix(tokenizer, context)
        return len(tokenizer(suffix, add_special_tokens=False)["input_ids"])

    def refusal_token_ids(self, tokenizer) -> list[int]:
        """First-token ids of the family's refusal openings (Arditi et al.: "I", and "As" for Qwen)."""
        ids = []
        for text in self.refusal_strings:
            token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if token_ids and token_ids[0] not in ids:
                ids.append(token_ids[0])
        return ids


ADAPTERS: tuple[Adapter, ...] = (
    Adapter("llama", ("llama",), LLAMA3_TEMPLATE),  # Llama-2/3 and Yi; the tokenizer's own template wins when present
    Adapter("mistral", ("mistral",), INST_TEMPLATE),
    Adapter("qwen2", ("qwen2",), CHATML_TEMPLATE, refusal_strings=("I", "As")),
    Adapter("qwen3", ("qwen3",), CHATML_TEMPLATE, refusal_strings=("I", "As")),
    Adapter("gemma", ("gemma",), GEMMA_TEMPLATE),
    Adapter("gemma2", ("gemma2",), GEMMA_TEMPLATE, post_sublayer_norms=True),
    Adapter("gemma3", ("gemma3_text",), GEMMA_TEMPLATE, post_sublayer_norms=True),
    Adapter("phi3", ("phi3",), PHI3_TEMPLATE),
)
SUPPORTED_MODEL_TYPES = tuple(t for a in ADAPTERS for t in a.model_types)


def adapter_for(model_type: str) -> Adapter:
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise RefusalLabError(
        f"unsupported architecture {model_type!r}; supported model types are {', '.join(SUPPORTED_MODEL_TYPES)}"
    )
