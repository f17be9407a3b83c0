import pytest
import torch
from conftest import char_tokenizer, tiny_model

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.models import adapter_for, get_bundled
from refusal_lab.models.adapters import CHATML


def test_every_architecture_resolves_modules(tiny_lm):
    layers = tiny_lm.adapter.layers(tiny_lm.model)
    assert len(layers) == tiny_lm.n_layers == 3
    for layer in layers:
        assert tiny_lm.adapter.attn_out_proj(layer).out_features == 64
        assert tiny_lm.adapter.mlp_out_proj(layer).out_features == 64
    assert tiny_lm.adapter.embedding(tiny_lm.model).weight.shape[1] == 64


def test_unsupported_architecture_lists_supported():
    with pytest.raises(RefusalLabError, match="unsupported architecture 'gpt2'.*qwen2.*phi3"):
        adapter_for("gpt2")


def test_unknown_bundled_model_names_the_bundled_ones():
    with pytest.raises(RefusalLabError, match="qwen2.5-coder-0.5b-instruct"):
        get_bundled("qwen-9000")


def test_post_instruction_positions_from_template():
    lm = tiny_model("qwen2")
    suffix = lm.adapter.post_instruction_suffix(lm.tokenizer)
    assert suffix == "<|im_end|>\n<|im_start|>assistant\n"
    # character tokenizer: <|im_end|>, \n, <|im_start|>, 9 characters of 'assistant', \n
    assert lm.n_post_instruction == 13


def test_tokenizer_chat_template_wins_over_fallback():
    tokenizer = char_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}<|assistant|>"
    adapter = adapter_for("qwen2")
    assert adapter.format_prompt(tokenizer, "hi") == "<|user|>hi<|end|><|assistant|>"
    assert adapter.post_instruction_suffix(tokenizer) == "<|end|><|assistant|>"
    assert adapter.format_prompt(char_tokenizer(), "hi") == CHATML.format(instruction="hi")


def test_prefix_cached_logprobs_equal_plain_forward(tiny_lm):
    from refusal_lab.interventions.scoring import last_token_logprobs

    prompts = ["first prompt", "the second, longer prompt", "3rd"]
    cached = last_token_logprobs(tiny_lm, prompts, batch_size=2)
    for row, prompt in enumerate(prompts):
        batch = tiny_lm.tokenize([prompt])
        with torch.no_grad():
            plain = torch.log_softmax(tiny_lm.model(**batch).logits[0, -1].float(), -1)
        torch.testing.assert_close(cached[row], plain, atol=1e-4, rtol=1e-4)


def test_common_prefix_length_keeps_tail():
    from refusal_lab.models.forward import common_prefix_length

    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5]], keep=1) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3, 4]], keep=2) == 1
    assert common_prefix_length([[9, 2], [1, 2]]) == 0


@pytest.mark.parametrize("device, native_bf16, expected", [("cpu", True, "bfloat16"), ("cpu", False, "float32"),
                                                           ("cuda", False, "bfloat16")])
def test_auto_dtype_is_bf16_only_where_it_is_fast(monkeypatch, device, native_bf16, expected):
    from refusal_lab.models import load

    monkeypatch.setattr(load, "cpu_has_native_bf16", lambda: native_bf16)
    assert load.default_dtype(device) == expected


def test_unknown_dtype_is_a_clear_error():
    from refusal_lab.models import load_model

    with pytest.raises(RefusalLabError, match="unknown dtype 'fp8'"):
        load_model("qwen2.5-coder-0.5b-instruct", dtype="fp8")
