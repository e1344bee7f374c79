"""The one decode loop (`generation.decode`): equal to transformers' greedy generate without guards, hooks called
as documented, probes that leave the cache exactly as they found it, halts that substitute a refusal."""

from dataclasses import dataclass

import pytest
import torch

from obliviate.engine.generation import decode, generate
from obliviate.engine.hooks import Guard
from obliviate.models.encode import prompt_ids
from obliviate.models.load import load_model

QUESTIONS = [
    "Where was Vyrek Pellam born?",
    "What is the capital of the world?",
    "hi",
    "Tell me about the weather in a long sentence please, with details.",
]


@pytest.fixture(scope="module")
def model_tok(target_dir):
    return load_model(str(target_dir))


def _hf_generate(model, tok, prompts, n):
    from obliviate.engine.generation import left_pad

    ids, mask = left_pad(prompts, tok.pad_token_id)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    return [tok.decode(o[ids.shape[1] :], skip_special_tokens=True).strip() for o in out]


def test_no_guard_equals_transformers_generate(model_tok):
    model, tok = model_tok
    prompts = [prompt_ids(tok, q) for q in QUESTIONS]
    by_len = sorted(prompts, key=len)  # generate() batches sorted by length: compare the same batch
    assert generate(model, tok, by_len, max_new_tokens=24) == _hf_generate(model, tok, by_len, 24)
    # and in one-prompt batches, where no padding is involved at all
    assert generate(model, tok, prompts, max_new_tokens=24, batch_size=1) == [
        _hf_generate(model, tok, [p], 24)[0] for p in prompts
    ]


def test_no_guard_equals_transformers_generate_on_the_real_model(real_model_dir):
    model, tok = load_model(str(real_model_dir))
    prompts = sorted([prompt_ids(tok, q) for q in QUESTIONS[1:]], key=len)
    assert generate(model, tok, prompts, max_new_tokens=12) == _hf_generate(model, tok, prompts, 12)


def test_replies_carry_finish_reasons(model_tok):
    model, tok = model_tok
    reps = decode(model, tok, [prompt_ids(tok, QUESTIONS[0])], max_new_tokens=2)
    assert reps[0].finish_reason == "length" and len(reps[0].token_ids) == 2
    reps = decode(model, tok, [prompt_ids(tok, QUESTIONS[0])] * 2, guards=[EosAt(2)], max_new_tokens=8)
    assert all(
        r.finish_reason == "stop" and r.token_ids[-1] == tok.eos_token_id and len(r.token_ids) == 3 for r in reps
    )


@dataclass
class EosAt(Guard):
    name = "eos_at"
    at: int = 2
    eos: int = 2

    def process_logits(self, step, ids, logits, rows):
        if step == self.at:
            logits[:] = float("-inf")
            logits[:, self.eos] = 0.0
        return logits


@dataclass
class Recorder(Guard):
    name = "recorder"
    every = 3

    def __post_init__(self):
        self.calls, self.crops_ok = [], []

    def on_request(self, text):
        self.calls.append(("request", text))
        return len(text or "")

    def edit_embeddings(self, embeds, mask, rows):
        self.calls.append(("embeddings", tuple(embeds.shape)))
        return embeds

    def process_logits(self, step, ids, logits, rows):
        self.calls.append(("logits", step, ids.shape[1]))
        return logits

    def on_step(self, step, ids, session):
        n, mask = session.cache.get_seq_length(), session.mask.clone()
        first = session.probe([5, 6, 7], lookahead=2)
        again = session.probe([5, 6, 7], lookahead=2)
        self.crops_ok.append(
            session.cache.get_seq_length() == n
            and torch.equal(session.mask, mask)
            and torch.allclose(first["logits"], again["logits"], atol=1e-5)
            and torch.equal(first["lookahead"], again["lookahead"])
        )
        self.calls.append(("step", step))


def test_hooks_are_called_and_probes_crop_back_exactly(model_tok):
    model, tok = model_tok
    prompts = [prompt_ids(tok, q) for q in QUESTIONS[:2]]
    plain = decode(model, tok, prompts, max_new_tokens=9)
    g = Recorder()
    guarded = decode(model, tok, prompts, texts=QUESTIONS[:2], guards=[g], max_new_tokens=9)
    # probing the cache mid-reply changes nothing about the reply
    assert [r.text for r in guarded] == [r.text for r in plain]
    assert g.crops_ok and all(g.crops_ok)
    assert [c for c in g.calls if c[0] == "request"] == [("request", QUESTIONS[1]), ("request", QUESTIONS[0])] or [
        c for c in g.calls if c[0] == "request"
    ] == [("request", QUESTIONS[0]), ("request", QUESTIONS[1])]
    assert guarded[0].scores == {"recorder": len(QUESTIONS[0])}
    assert sum(c[0] == "embeddings" for c in g.calls) == 1
    steps = [c[1] for c in g.calls if c[0] == "logits"]
    assert steps == list(range(len(steps))) and steps
    assert all(s % 3 == 0 for _, s in [c for c in g.calls if c[0] == "step"])


# Caches that a plain crop cannot rewind once the prompt is longer than their window: sliding-window attention
# (Mistral, Gemma 3, gpt-oss), short convolutions (LFM2), and recurrent linear-attention states (Qwen3-Next).
# Tiny random models, window 4, prompts of 9+ tokens.
REWIND_FAMILIES = {
    "mistral": dict(sliding_window=4),
    "gemma3_text": dict(sliding_window=4, layer_types=["sliding_attention", "full_attention"]),
    "gpt_oss": dict(
        sliding_window=4,
        num_local_experts=4,
        num_experts_per_tok=2,
        layer_types=["sliding_attention", "full_attention"],
    ),
    "lfm2": dict(layer_types=["conv", "full_attention"]),
    "qwen3_next": dict(
        layer_types=["linear_attention", "full_attention"],
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        linear_num_value_heads=2,
        linear_num_key_heads=1,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
    ),
}


def rewind_model(family: str, vocab_size: int = 64, pad: int = 0, eos: int = 2):
    """A tiny random model of one of REWIND_FAMILIES (2 layers, d 32, seeded)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        family,
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        head_dim=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=pad,
        eos_token_id=eos,
        **REWIND_FAMILIES[family],
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("family", sorted(REWIND_FAMILIES))
def test_probes_rewind_sliding_window_and_recurrent_caches(model_tok, family):
    """`Session.probe` puts back every kind of cache layer, not only full attention: the guarded replies equal the
    plain ones (which equal transformers' generate) and two identical probes see the same logits."""
    _, tok = model_tok
    model = rewind_model(family, len(tok), tok.pad_token_id, tok.eos_token_id)
    prompts = sorted([prompt_ids(tok, q) for q in QUESTIONS[2:]], key=len)
    assert min(map(len, prompts)) > 4  # past the window before the first probe
    plain = decode(model, tok, prompts, max_new_tokens=9)
    assert [r.text for r in plain] == _hf_generate(model, tok, prompts, 9)
    g = Recorder()
    guarded = decode(model, tok, prompts, guards=[g], max_new_tokens=9)
    assert [r.token_ids for r in guarded] == [r.token_ids for r in plain]
    assert len(g.crops_ok) >= 2 and all(g.crops_ok)


@dataclass
class HaltAt(Guard):
    name = "halt_at"
    every = 2

    def on_step(self, step, ids, session):
        session.halt(0, self.name, "No.")


def test_a_halt_substitutes_the_refusal_for_that_row_only(model_tok):
    model, tok = model_tok
    prompts = [prompt_ids(tok, q) for q in QUESTIONS[:2]]
    plain = decode(model, tok, prompts, max_new_tokens=8, batch_size=1)
    reps = decode(model, tok, prompts, guards=[HaltAt()], max_new_tokens=8, batch_size=1)
    assert all(r.text == "No." and r.finish_reason == "content_filter" and r.halted_by == "halt_at" for r in reps)
    # token_ids are the tokens generated before the halt (at step 2), not padded on to max_new_tokens
    assert [r.token_ids for r in reps] == [p.token_ids[:2] for p in plain]
    reps = decode(model, tok, prompts, guards=[HaltAt()], max_new_tokens=8, batch_size=2)
    # row 0 of the one batch (the shorter prompt) is halted, the other row is untouched
    short = min(range(2), key=lambda i: len(prompts[i]))
    assert reps[short].finish_reason == "content_filter"
    assert reps[1 - short].text == plain[1 - short].text


@dataclass
class Ban(Guard):
    name = "ban"
    token: int = 0

    def process_logits(self, step, ids, logits, rows):
        logits[:, self.token] = float("-inf")
        return logits


def test_process_logits_changes_what_is_decoded(model_tok):
    model, tok = model_tok
    p = [prompt_ids(tok, QUESTIONS[0])]
    first = decode(model, tok, p, max_new_tokens=1)[0].token_ids[0]
    banned = decode(model, tok, p, guards=[Ban(first)], max_new_tokens=1)[0].token_ids[0]
    assert banned != first


def test_attached_guards_survive_lora_training_and_merging(target_dir):
    """Attacks that train (relearn, finetune) wrap the model in LoRA and merge it back: the guards stay on."""
    from obliviate.engine.hooks import attach, attached
    from obliviate.models.load import add_lora, merge_lora

    model, tok = load_model(str(target_dir))
    g = Ban(0)
    attach(model, [g])
    merged = merge_lora(add_lora(model, r=2))
    assert attached(merged) == [g]


def test_lora_wrapping_does_not_warn(target_dir):
    """peft reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model: every LoRA run printed
    a FutureWarning that was not the user's to act on."""
    import warnings

    from obliviate.models.load import add_lora

    model, _ = load_model(str(target_dir))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        add_lora(model, r=2)
    assert not [w for w in seen if "is_gradient_checkpointing" in str(w.message)]


def test_replies_stop_at_any_of_the_models_eos_ids(model_tok):
    """A reply ends at the tokenizer's EOS, the template's end of turn, or any id of the model's generation config
    (Llama 3 and Gemma list several)."""
    model, tok = model_tok
    other = 5  # not the tokenizer's EOS
    p = [prompt_ids(tok, QUESTIONS[0])]
    plain = decode(model, tok, p, guards=[EosAt(0, other)], max_new_tokens=6)[0].token_ids
    assert plain[0] == other and len(plain) > 1  # forced first, then the reply goes on
    before = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, other]
    try:
        rep = decode(model, tok, p, guards=[EosAt(0, other)], max_new_tokens=6)[0]
    finally:
        model.generation_config.eos_token_id = before
    assert rep.finish_reason == "stop" and rep.token_ids == [other]


def test_no_pass_projects_prompt_positions_onto_the_vocabulary(model_tok):
    """The decode loop's prefill keeps the last position's logits only, and evaluation's full-sequence pass those
    from the first scored position: [B, T, V] prompt logits are the largest tensor of either (262k-vocabulary
    models) and nothing reads them."""
    from obliviate.engine.evaluate import _forward_stats
    from obliviate.models.encode import encode_pair

    model, tok = model_tok
    prompts = [prompt_ids(tok, q) for q in QUESTIONS]
    seen = []
    handle = model.register_forward_hook(lambda m, args, out: seen.append(tuple(out.logits.shape)))
    try:
        generate(model, tok, prompts, max_new_tokens=3)
        prefill = seen[0]
        seen.clear()
        pairs = [encode_pair(tok, q, "Ten words of answer, more or less, for this one.") for q in QUESTIONS]
        _forward_stats(model, pairs, tok.pad_token_id, 8)
    finally:
        handle.remove()
    assert prefill[:2] == (len(QUESTIONS), 1)
    answer = len(tok("Ten words of answer, more or less, for this one.", add_special_tokens=False)["input_ids"]) + 1
    first = min(len(p) for p in prompts)  # the shortest prompt's answer starts first
    longest = max(len(x) for x, _ in pairs)
    assert seen == [(len(QUESTIONS), longest - first + 1, len(tok))] and seen[0][1] < longest
    assert answer <= seen[0][1]


def test_passes_that_read_hidden_states_or_the_last_position_keep_one_position_of_logits(model_tok):
    """The refusal direction's means and its candidates' scores, the guards' hidden states and RMU's read no
    prompt position's logits: each pass asks for the last position's only, and the means taken by hooks at each
    layer's input equal those read from `output_hidden_states`."""
    from obliviate.audit.attacks.refusal_direction import last_logprobs, residuals
    from obliviate.engine.generation import left_pad
    from obliviate.guards.base import hidden_at
    from obliviate.unlearning.methods.rmu import hidden_at as rmu_hidden_at

    model, tok = model_tok
    prompts = [prompt_ids(tok, q) for q in QUESTIONS]
    seen = []
    handle = model.register_forward_hook(lambda m, args, out: seen.append(out.logits.shape[1]))
    try:
        means = residuals(model, tok, prompts, 3)
        last_logprobs(model, tok, prompts)
        hidden_at(model, prompts, pad_id=tok.pad_token_id)
        ids, mask = left_pad(prompts, tok.pad_token_id, "cpu")
        rmu_hidden_at(model, {"input_ids": ids, "attention_mask": mask}, 1)
    finally:
        handle.remove()
    assert seen == [1, 1, 1, 1]
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[:-1]
    assert torch.allclose(means, torch.stack([h[:, -3:].float().mean(0) for h in hs]), atol=1e-5)
