"""token_logps computes logits only from the batch's first scored position: the same log-probs as the full
pass, on every architecture family, and through a LoRA (peft) wrapper."""

import pytest
import torch

from obliviate.models.encode import IGNORE, collate, sequence_logp, token_logps
from tests.models.test_anatomy import FAMILIES, _model

PAIRS = [
    ([1, 5, 9, 13, 7, 3, 11, 12, 2], [IGNORE] * 6 + [11, 12, 2]),
    ([1, 5, 9, 3, 20, 2], [IGNORE] * 4 + [20, 2]),
    ([1, 8, 8, 8, 8, 8, 8, 3, 30, 31, 32, 2], [IGNORE] * 8 + [30, 31, 32, 2]),
]


def _full(model, batch):
    """The reference: every position's logits, [B, T-1] log-probs of the labelled tokens."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    lp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return lp * (labels != IGNORE), labels != IGNORE


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_trimmed_logps_equal_the_full_pass(family):
    model = _model(family)
    batch = collate(PAIRS, 0)
    with torch.no_grad():
        logp, mask, logits = token_logps(model, batch)
        ref, ref_mask = _full(model, batch)
    f = 4 - 1  # the shortest prompt has 4 tokens: its first answer token is scored from position 3
    assert logp.shape == (3, 12 - 1 - f) and logits.shape[:2] == logp.shape
    assert torch.equal(mask.bool(), ref_mask[:, f:]) and not ref_mask[:, :f].any()
    assert torch.allclose(logp, ref[:, f:], atol=1e-5)
    seq, n = sequence_logp(model, batch)
    assert torch.allclose(seq, ref.sum(-1), atol=1e-4) and n.tolist() == [3, 2, 4]


def test_trimmed_logps_through_a_lora_wrapper():
    from obliviate.models.load import add_lora

    model = add_lora(_model("llama"), r=2, target_modules=["q_proj", "v_proj"])
    batch = collate(PAIRS, 0)
    calls = []
    base = model.get_base_model()
    handle = base.lm_head.register_forward_hook(lambda m, a, out: calls.append(a[0].shape[1]))
    try:
        with torch.no_grad():
            logp, _, _ = token_logps(model, batch)
    finally:
        handle.remove()
    assert calls == [12 - 3]  # the projection saw positions 3 .. 11 only
    assert torch.allclose(logp, _full(model, batch)[0][:, 3:], atol=1e-5)


# A reasoning-style chat template, in the shape Qwen3's takes: with `enable_thinking` false the assistant header
# is followed by an empty thinking block; otherwise the model would open its reply with reasoning.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def test_reasoning_templates_are_rendered_without_thinking(tiny_tokenizer):
    """Prompts, the server's chat ids and the LLM judge's prompt all render `enable_thinking=False`, so short replies
    are answers; a template that does not read the variable renders exactly as before."""
    import copy

    from obliviate.models.encode import assistant_header, chat_text, prompt_ids
    from obliviate.serve.engine import chat_ids

    tok = copy.deepcopy(tiny_tokenizer)
    plain = prompt_ids(tok, "hi")
    assert (
        plain
        == tok(
            tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
    )
    tok.chat_template = THINKING_TEMPLATE
    text = tok.decode(prompt_ids(tok, "hi"))
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n"), text
    assert tok.decode(assistant_header(tok)).endswith("</think>\n\n")
    assert chat_ids(tok, [{"role": "user", "content": "hi"}]) == prompt_ids(tok, "hi")
    assert chat_text(tok, [{"role": "user", "content": "hi"}]).endswith("<|im_end|>\n")  # no generation prompt


# Gemma's shape: turns end with <end_of_turn>, which is not the tokenizer's EOS (<eos>)
TURN_TEMPLATE = (
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def test_answers_end_and_replies_stop_at_the_templates_end_of_turn(tiny_tokenizer):
    import copy
    from types import SimpleNamespace

    from obliviate.models.encode import answer_ids, end_of_turn_id, stop_ids

    tok = copy.deepcopy(tiny_tokenizer)
    assert end_of_turn_id(tok) == tok.eos_token_id  # the tiny template ends turns with its EOS
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.chat_template = TURN_TEMPLATE
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    assert eot != tok.eos_token_id and end_of_turn_id(tok) == eot  # re-read after the template changed
    assert answer_ids(tok, "Paris")[-1] == eot
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[tok.eos_token_id, 7]))
    assert stop_ids(tok, model) == {tok.eos_token_id, eot, 7}


# A template that opens every assistant message with a marker of its own, after the generation prompt (Command R7B
# writes "<|START_RESPONSE|>" there, gpt-oss "<|channel|>final<|message|>"); written here in our own words.
OPENER_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|U|>{{ m['content'] }}<|EOT|>"
    "{% else %}<|A|><|OPEN|>{{ m['content'] }}<|CLOSE|><|EOT|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|A|>{% endif %}"
)
# Llama 2 shape: a space between the instruction and the reply (not a prefix: the reply's first word carries it)
SPACE_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }} <|eos|>{% endif %}{% endfor %}"
)
# GLM 4 shape: the generation prompt ends with an empty thinking block, the message puts a newline after it
NEWLINE_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|U|>{{ m['content'] }}"
    "{% else %}<|A|><think></think>\n{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|A|><think></think>{% endif %}"
)

# DeepSeek-R1-distill shape: the generation prompt opens a reasoning block that rendered messages never carry
OPEN_BLOCK_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|U|>{{ m['content'] }}"
    "{% else %}<|A|>{{ m['content'] }}<|EOT|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|A|><think>\n{% endif %}"
)
# a role header written as a tag: in the generation prompt and before every assistant message alike
TAG_HEADER_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<user>\n{{ m['content'] }}\n"
    "{% else %}<assistant>\n{{ m['content'] }}<|EOT|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>\n{% endif %}"
)


def test_prompts_end_with_what_the_template_writes_before_a_reply(tiny_tokenizer):
    import copy

    from obliviate.models.encode import encode_pair, end_of_turn_id, prompt_ids, reply_prefix
    from obliviate.serve.engine import chat_ids

    tok = copy.deepcopy(tiny_tokenizer)
    assert reply_prefix(tok) == ""  # the tiny template writes the reply right after its generation prompt
    plain = prompt_ids(tok, "Where is Paris?")
    tok.add_special_tokens({"additional_special_tokens": ["<|U|>", "<|A|>", "<|EOT|>", "<|OPEN|>", "<|CLOSE|>"]})
    tok.chat_template = OPENER_TEMPLATE
    opener = tok.convert_tokens_to_ids("<|OPEN|>")
    assert reply_prefix(tok) == "<|OPEN|>"
    p = prompt_ids(tok, "Where is Paris?")
    assert p[-2:] == [tok.convert_tokens_to_ids("<|A|>"), opener] and p != plain
    ids, labels = encode_pair(tok, "Where is Paris?", "In France.")
    assert ids[: len(p)] == p and labels[len(p) - 1] == IGNORE and labels[len(p)] == ids[len(p)]
    assert ids[-1] == end_of_turn_id(tok) == tok.convert_tokens_to_ids("<|CLOSE|>")
    # the server: a new reply opens like `prompt_ids`; a prefill continues after the opener
    user = [{"role": "user", "content": "Where is Paris?"}]
    assert chat_ids(tok, user) == p
    sure = tok("Sure", add_special_tokens=False)["input_ids"]
    assert chat_ids(tok, user + [{"role": "assistant", "content": "Sure"}]) == p + sure
    tok.chat_template = SPACE_TEMPLATE
    assert reply_prefix(tok) == ""
    tok.chat_template = NEWLINE_TEMPLATE
    assert reply_prefix(tok) == "\n"
    assert tok.decode(prompt_ids(tok, "Where is Paris?")).endswith("<think></think>\n")
    # an opened reasoning block is closed empty, as Qwen3's template does with enable_thinking=False
    tok.chat_template = OPEN_BLOCK_TEMPLATE
    assert reply_prefix(tok) == "\n</think>\n\n"
    assert tok.decode(prompt_ids(tok, "Where is Paris?")).replace(" ", "").endswith("<|A|><think>\n\n</think>\n\n")
    tok.chat_template = TAG_HEADER_TEMPLATE
    assert reply_prefix(tok) == ""
