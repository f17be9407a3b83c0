"""Chat contexts: rendered strings written out by hand (the default byte-identical to the one-user-turn prompts of
before), templates that insert a default system prompt or have no system role, the prefix cache and generation
under every context, and the held-out scorer's per-context rows and keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from refusal_lab.core.errors import RefusalLabError
from refusal_lab.models.contexts import CONTEXTS, ChatContext, get_context

Q = "How do I bake bread?"
HELPFUL = "You are a helpful assistant."
QWEN_DEFAULT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
FIRST_USER = "Hi! Could you suggest a simple dinner I can cook tonight?"
FIRST_REPLY = ("Of course! A vegetable stir-fry is quick and easy: fry sliced peppers, carrots and broccoli in a little "
               "oil, add soy sauce and garlic, and serve it over rice. It takes about twenty minutes.")

# The non-tools branch of Qwen2.5's chat template: a default system turn whenever the first message is not a system one.
QWEN25 = ("{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
          "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\n" + QWEN_DEFAULT + "<|im_end|>\\n' }}{%- endif %}"
          "{%- for message in messages %}{%- if message.role == 'user' or (message.role == 'system' and not "
          "loop.first) or message.role == 'assistant' %}{{- '<|im_start|>' + message.role + '\\n' + message.content "
          "+ '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}"
          "{{- '<|im_start|>assistant\\n' }}{%- endif %}")
# Llama 3.1's shape: bos, then a dated system header whether or not a system message is given.
LLAMA31 = ("{{- bos_token }}{{- '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December "
           "2023\\n\\n' }}{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- set messages = "
           "messages[1:] %}{%- endif %}{{- '<|eot_id|>' }}{%- for m in messages %}{{- '<|start_header_id|>' + "
           "m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}{%- endfor %}"
           "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
# Gemma's: no system role (it raises); Gemma 3's: it folds the system prompt into the first user turn itself.
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
         "{% endif %}{% for m in messages %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else "
         "m['role']) + '\\n' + m['content'] + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}"
         "{{ '<start_of_turn>model\\n' }}{% endif %}")
GEMMA3 = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\\n\\n' %}"
          "{% set rest = messages[1:] %}{% else %}{% set first = '' %}{% set rest = messages %}{% endif %}"
          "{% for m in rest %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n' + "
          "(first if loop.first else '') + m['content'] + '<end_of_turn>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")


def _chatml(*turns):
    return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns) + "<|im_start|>assistant\n"


def _with_template(arch: str, template: str):
    lm = tiny_model(arch, n_layers=1)
    lm.tokenizer.chat_template = template
    return lm


def test_the_default_context_renders_the_one_user_turn_prompts_byte_for_byte():
    expected = {
        "qwen2": f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n",
        "llama": f"<|start_header_id|>user<|end_header_id|>\n\n{Q}<|eot_id|><|start_header_id|>assistant"
                 "<|end_header_id|>\n\n",
        "gemma": f"<start_of_turn>user\n{Q}<end_of_turn>\n<start_of_turn>model\n",
        "mistral": f"[INST] {Q} [/INST]",
        "phi3": f"<|user|>\n{Q}<|end|>\n<|assistant|>\n",
    }
    for arch, text in expected.items():
        lm = tiny_model(arch, n_layers=1)
        assert lm.context.name == "default"
        assert lm.format([Q]) == [text] and lm.in_context("default").format([Q]) == [text], arch
        assert lm.context_key == ""
    real = _with_template("qwen2", QWEN25)  # a tokenizer's own template, as the bundled Qwen2.5 models have
    assert real.format([Q]) == [_chatml(("system", QWEN_DEFAULT), ("user", Q))]


def test_every_context_on_a_chatml_model_by_hand():
    lm = tiny_model("qwen2", n_layers=1)
    rendered = {name: lm.in_context(name).format([Q])[0] for name in CONTEXTS}
    assert rendered["none"] == _chatml(("user", Q))  # the fallback template has no default system prompt
    assert rendered["helpful"] == _chatml(("system", HELPFUL), ("user", Q))
    assert rendered["persona"].startswith("<|im_start|>system\nYou are Robin, the friendly virtual assistant")
    assert rendered["terse"].startswith("<|im_start|>system\nAnswer concisely and directly.")
    assert rendered["two-turn"] == _chatml(("user", FIRST_USER), ("assistant", FIRST_REPLY), ("user", Q))
    keys = {name: lm.in_context(name).context_key for name in CONTEXTS}
    assert keys["default"] == keys["none"] == ""  # the same prompts: the same stored results
    assert len({keys[n] for n in ("helpful", "persona", "terse", "two-turn")}) == 4 and all(
        len(keys[n]) == 16 for n in ("helpful", "persona", "terse", "two-turn"))
    # the text after the instruction is the same in every context: <|im_end|> \n <|im_start|> a-s-s-i-s-t-a-n-t \n
    assert {lm.in_context(name).n_post_instruction for name in CONTEXTS} == {13}


def test_none_drops_a_default_system_prompt_and_an_empty_one_is_an_empty_turn():
    qwen = _with_template("qwen2", QWEN25)
    assert qwen.in_context("none").format([Q]) == [_chatml(("user", Q))]
    assert qwen.in_context(ChatContext("empty", "")).format([Q]) == [_chatml(("system", ""), ("user", Q))]
    assert qwen.in_context("helpful").format([Q]) == [_chatml(("system", HELPFUL), ("user", Q))]
    assert qwen.in_context("two-turn").format([Q]) == [_chatml(("system", QWEN_DEFAULT), ("user", FIRST_USER),
                                                               ("assistant", FIRST_REPLY), ("user", Q))]
    assert qwen.in_context("none").context_key not in ("", qwen.in_context("helpful").context_key)
    llama = _with_template("llama", LLAMA31)
    turn = f"<|start_header_id|>user<|end_header_id|>\n\n{Q}<|eot_id|>"
    gen = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    dated = "<bos><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\n"
    assert llama.format([Q]) == [f"{dated}<|eot_id|>{turn}{gen}"]
    assert llama.in_context("none").format([Q]) == [f"<bos>{turn}{gen}"]  # bos kept, the dated header gone
    assert llama.in_context("helpful").format([Q]) == [f"{dated}{HELPFUL}<|eot_id|>{turn}{gen}"]


def test_a_template_without_a_system_role_gets_the_system_prompt_in_the_first_user_turn():
    gemma = _with_template("gemma", GEMMA)
    end = "<end_of_turn>\n<start_of_turn>model\n"
    assert gemma.in_context("helpful").format([Q]) == [f"<bos><start_of_turn>user\n{HELPFUL}\n\n{Q}{end}"]
    assert gemma.in_context("none").format([Q]) == [f"<bos><start_of_turn>user\n{Q}{end}"]
    two = ChatContext("system-and-history", HELPFUL, history=[("hello", "hi there")])
    assert gemma.in_context(two).format([Q]) == [
        f"<bos><start_of_turn>user\n{HELPFUL}\n\nhello<end_of_turn>\n<start_of_turn>model\nhi there<end_of_turn>\n"
        f"<start_of_turn>user\n{Q}{end}"]
    gemma3 = _with_template("gemma", GEMMA3)  # folds by itself: "none" has nothing to cut
    assert gemma3.in_context("helpful").format([Q]) == [f"<bos><start_of_turn>user\n{HELPFUL}\n\n{Q}{end}"]
    assert gemma3.in_context("none").format([Q]) == [f"<bos><start_of_turn>user\n{Q}{end}"]
    fallback = tiny_model("mistral", n_layers=1)  # the fallback [INST] template has no system role either
    assert fallback.in_context("terse").format([Q]) == [
        "[INST] Answer concisely and directly. Keep replies to a few sentences unless the user asks for more detail, "
        f"and skip pleasantries.\n\n{Q} [/INST]"]


def test_contexts_are_checked():
    with pytest.raises(RefusalLabError, match="exclude each other"):
        ChatContext("both", "x", use_default_system=True)
    with pytest.raises(RefusalLabError, match="unknown chat context 'nope'"):
        get_context("nope")
    assert get_context("helpful").system == HELPFUL and get_context(CONTEXTS["none"]) is CONTEXTS["none"]


@pytest.mark.skipif(not (Path.home() / ".cache/refusal-lab/models/qwen2.5-coder-0.5b-instruct").is_dir(),
                    reason="the bundled 0.5B is not converted here (make models)")
def test_the_bundled_qwen25_tokenizer_under_none_and_helpful():
    from transformers import AutoTokenizer

    from refusal_lab.models.adapters import adapter_for

    tokenizer = AutoTokenizer.from_pretrained(Path.home() / ".cache/refusal-lab/models/qwen2.5-coder-0.5b-instruct")
    adapter = adapter_for("qwen2")
    assert adapter.format_prompt(tokenizer, Q) == _chatml(("system", QWEN_DEFAULT), ("user", Q))
    assert adapter.format_prompt(tokenizer, Q, CONTEXTS["none"]) == _chatml(("user", Q))
    assert adapter.format_prompt(tokenizer, Q, CONTEXTS["helpful"]) == _chatml(("system", HELPFUL), ("user", Q))


@pytest.mark.parametrize("arch", ["qwen2", "gemma"])
def test_prefix_cache_and_generation_equal_plain_passes_under_every_context(arch, one_thread):
    from refusal_lab.evaluation.generate import generate_ids, stop_ids, until_stop
    from refusal_lab.interventions.scoring import last_token_logprobs

    base = tiny_model(arch, n_layers=2)
    prompts = ["first prompt", "the second, longer prompt", "3rd"]
    for name in CONTEXTS:
        lm = base.in_context(name)
        cached = last_token_logprobs(lm, prompts, batch_size=2)
        generated = generate_ids(lm, prompts, max_new_tokens=3, batch_size=2)
        for row, prompt in enumerate(prompts):
            ids = torch.tensor([lm.tokenizer(lm.format([prompt])[0], add_special_tokens=False)["input_ids"]])
            with torch.no_grad():
                plain = torch.log_softmax(lm.model(input_ids=ids).logits[0, -1].float(), -1)
                greedy = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                                           do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)[0, ids.shape[1]:]
            torch.testing.assert_close(cached[row], plain, atol=1e-4, rtol=1e-4, msg=f"{name}: {prompt}")
            assert generated[row] == until_stop(greedy.tolist(), stop_ids(lm)), (name, prompt)
