"""Turn QA pairs into token ids through the tokenizer's own chat template.

prompt ids = chat_template([user: question], add_generation_prompt=True) + `reply_prefix` (what some templates
write at the start of an assistant message); answer ids = tokenize(answer) + the token that ends an assistant turn in
that template (`end_of_turn_id`: usually EOS; Gemma's `<end_of_turn>`).
They are concatenated at the token level, so the answer's ids are the same whatever the prompt and there is
no tokenisation seam. Only answer tokens carry labels (prompt tokens are -100).

A tokenizer given a plain template (`models.prompt_format`: a base model, or `--no-chat-template`) writes items as
that template's text instead, e.g. "Question: {question}\nAnswer: {answer}": the prompt is the text before the
answer, and the answer's ids are those the whole text has after it, then EOS.
"""

from __future__ import annotations

import re
import weakref

import torch

from obliviate.models.prompt_format import PLAIN_ATTR, RAW_TEMPLATE, prompt_parts

IGNORE = -100


# Variables every chat template is rendered with. Reasoning templates (Qwen3, SmolLM3, ...) read
# `enable_thinking`: False opens the reply with an empty thinking block, so the 32-48 tokens obliviate generates,
# trains on and judges are the answer itself, not the first lines of a reasoning trace. Templates that do not
# use the variable ignore it.
CHAT_TEMPLATE_VARIABLES = {"enable_thinking": False}


def chat_text(tokenizer, messages: list[dict], **kwargs) -> str:
    """`messages` rendered by the tokenizer's chat template (as text), with `CHAT_TEMPLATE_VARIABLES`."""
    return tokenizer.apply_chat_template(messages, tokenize=False, **CHAT_TEMPLATE_VARIABLES, **kwargs)


def plain_template(tokenizer) -> str | None:
    """The plain template the tokenizer's items are written in (`models.prompt_format`), None where its chat
    template writes them. A tokenizer with neither gets `RAW_TEMPLATE`: the question and a newline."""
    template = getattr(tokenizer, PLAIN_ATTR, None)
    if template is None and getattr(tokenizer, "chat_template", None) is None:
        return RAW_TEMPLATE
    return template


def chat_formatted(tokenizer) -> bool:
    """Whether prompts are written in the tokenizer's chat template (it has one, and no plain template replaces
    it)."""
    return plain_template(tokenizer) is None


def prompt_ids(tokenizer, question: str) -> list[int]:
    """The user turn plus the assistant header, in the tokenizer's chat template. In a plain template, BOS and the
    template's text before the answer ("Question: ...\nAnswer:"); in the raw one, the question and a newline."""
    template = plain_template(tokenizer)
    if template == RAW_TEMPLATE:
        return text_ids(tokenizer, question.rstrip() + "\n")
    if template is not None:
        return text_ids(tokenizer, prompt_parts(template, question)[0])
    return tokenizer(prompt_text(tokenizer, [{"role": "user", "content": question}]), add_special_tokens=False)[
        "input_ids"
    ]


def conversation_ids(tokenizer, messages: list[dict]) -> list[int]:
    """A conversation of user (and system) and assistant turns ending with a user turn, and the opening of the
    assistant's reply (a many-shot prompt). In the chat template, the messages as its turns; in a plain template,
    each exchange written as the template's text ("Question: ...\\nAnswer: ...") with a blank line before the next,
    then the last user turn's prompt, after BOS. One user message gives `prompt_ids`."""
    template = plain_template(tokenizer)
    if template is None:
        return tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False)["input_ids"]

    def asked(question: str) -> tuple[str, str]:  # (prompt text, the separator before an answer)
        if template == RAW_TEMPLATE:
            return question.rstrip() + "\n", ""
        prompt, sep, _ = prompt_parts(template, question)
        return prompt, sep

    blocks, open_prompt = [], None
    for m in messages:
        if m["role"] == "assistant":
            prompt, sep = open_prompt or ("", "")
            blocks.append(prompt + sep + m["content"])
            open_prompt = None
        elif m["role"] == "user":
            if open_prompt is not None:
                blocks.append(open_prompt[0].rstrip())
            open_prompt = asked(m["content"])
        else:
            blocks.append(m["content"])
    last = open_prompt[0] if open_prompt is not None else ""
    return text_ids(tokenizer, "".join(b + "\n\n" for b in blocks) + last)


def prompt_text(tokenizer, messages: list[dict]) -> str:
    """`messages` and the opening of the assistant's reply, as text: the template's generation prompt, then
    `reply_prefix` (what the template writes inside an assistant message before its text, if anything)."""
    return chat_text(tokenizer, messages, add_generation_prompt=True) + reply_prefix(tokenizer)


def post_instruction_tokens(tok) -> int:
    """How many template tokens follow the user's text (the common suffix of two chat prompts): the assistant
    header, e.g. "<|im_end|>\\n<|im_start|>assistant\\n". Position -(n + 1) of a prompt is the last instruction token."""
    # texts that end in different characters (a letter, "?", a digit), so that no piece of the user's text is
    # common to all of them; the shortest common suffix over the pairs is the template's
    ps = [prompt_ids(tok, t) for t in ("alpha beta", "gamma?", "7")]
    n_min = None
    for a, b in zip(ps, ps[1:]):
        n = 0
        while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
            n += 1
        n_min = n if n_min is None else min(n_min, n)
    return max(1, n_min)


def assistant_header(tok) -> list[int]:
    """The post-instruction tokens themselves: what a chat template puts between a user's text and a reply."""
    return prompt_ids(tok, "7")[-post_instruction_tokens(tok) :]


_MARKER = "Zq7xReplyEndsHere"
_RENDERED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> (template, facts)


def _reply_facts(tokenizer) -> tuple[int, str]:
    """(end_of_turn_id, reply_prefix), read once per tokenizer and template from two renderings: a user turn with
    the generation prompt, and the same turn followed by an assistant message whose text is a marker."""
    if plain_template(tokenizer) is not None:  # plain text: answers end with EOS, and nothing opens them
        return tokenizer.eos_token_id, ""
    template = getattr(tokenizer, "chat_template", None)
    hit = _RENDERED.get(tokenizer)
    if hit is not None and hit[0] == template:
        return hit[1]
    found, prefix = tokenizer.eos_token_id, ""
    if template is not None:
        user = [{"role": "user", "content": "7"}]
        try:
            opened = chat_text(tokenizer, user, add_generation_prompt=True)
            text = chat_text(tokenizer, user + [{"role": "assistant", "content": _MARKER}])
        except Exception:  # noqa: BLE001 - a template that rejects this conversation: EOS, no prefix
            opened = text = ""
        if _MARKER in text:
            special = set(tokenizer.all_special_ids) | {
                i for i, t in tokenizer.added_tokens_decoder.items() if getattr(t, "special", False)
            }
            after = tokenizer(text[text.index(_MARKER) + len(_MARKER) :], add_special_tokens=False)["input_ids"]
            found = next((i for i in after[:3] if i in special), found)
            before = text[: text.index(_MARKER)]
            # Spaces alone are left out: Llama 2 writes "[/INST] " + text, and its tokenizer already starts a
            # reply's first word with the space. A newline (GLM 4's "</think>\n") is kept.
            if before.startswith(opened) and before[len(opened) :].strip(" "):
                prefix = before[len(opened) :]
            prefix = prefix or _close_opened_block(opened, before)
    _RENDERED[tokenizer] = (template, (found, prefix))
    return found, prefix


def _close_opened_block(opened: str, before: str) -> str:
    """The generation prompt may open a block that no rendered assistant message has: the reasoning of
    DeepSeek-R1 distills and Nemotron Nano 2 ("...<think>\n"), whose templates do not read `enable_thinking`.
    The block is closed empty, as Qwen3's template does with `enable_thinking=False` ("<think>\n\n</think>\n\n"),
    so that the reply is the answer, not the start of a reasoning trace. A tag that the assistant's own messages
    also carry before their text is a role header, not such a block, and stays open."""
    m = re.search(r"<([A-Za-z_][\w-]*)>(\s*)$", opened)
    if m is None or before.rstrip().endswith(m.group(0).rstrip()) or f"</{m.group(1)}>" in before:
        return ""
    return f"{m.group(2)}</{m.group(1)}>\n\n"


def end_of_turn_id(tokenizer) -> int:
    """The token that ends an assistant turn: the first special token the chat template writes after an assistant
    message's text (`<|im_end|>` in ChatML, `<|eot_id|>` in Llama 3, `<end_of_turn>` in Gemma, `<|end|>` in Phi-3,
    `</s>` in Mistral). Often the tokenizer's EOS, but not always (Gemma's EOS is `<eos>`): answers are trained to
    end, and replies stop, where the model's own turns do. The tokenizer's EOS when there is no template or it
    writes no special token there."""
    return _reply_facts(tokenizer)[0]


def reply_prefix(tokenizer) -> str:
    """What the chat template writes inside an assistant message before its text, beyond the generation prompt:
    Command R7B's `<|START_RESPONSE|>`, gpt-oss's `<|channel|>final<|message|>` (the answer channel, not the
    analysis one). "" for most templates (ChatML, Llama 3, Gemma, Mistral, ...) and without a template. Prompts
    end with it, so that replies, trained answers and prefills sit where the model's own answer text does."""
    return _reply_facts(tokenizer)[1]


def stop_ids(tokenizer, model=None) -> set[int]:
    """Token ids that end a reply: the tokenizer's EOS, the end of an assistant turn (`end_of_turn_id`) and the
    model's `generation_config.eos_token_id` (one id or several, e.g. Llama 3's and Gemma's)."""
    ids = {tokenizer.eos_token_id, end_of_turn_id(tokenizer)}
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(gen) if isinstance(gen, (list, tuple)) else {gen}
    return ids - {None}


def answer_ids(tokenizer, answer: str) -> list[int]:
    """An answer's ids and the token that ends the assistant's turn (`end_of_turn_id`). In a plain template, the
    ids the template's text has after the prompt: those of "\nAnswer: Paris" after "\nAnswer:" (" Paris" as one
    token where the tokenizer joins a space to the word, with no stray space token and no doubled prefix space)."""
    template = plain_template(tokenizer)
    if template is not None and template != RAW_TEMPLATE:
        _, sep, anchor = prompt_parts(template, "")
        ids = _continuation(tokenizer, anchor, sep + answer)
    else:
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return ids + [end_of_turn_id(tokenizer)]


def _continuation(tokenizer, anchor: str, text: str) -> list[int]:
    """The ids of `text` where it follows `anchor`: those of anchor + text after the anchor's own, when the anchor's
    ids are a prefix of them (the usual case: tokenizers split at the end of "Answer:"); else text's ids alone."""
    if anchor:
        head = tokenizer(anchor, add_special_tokens=False)["input_ids"]
        ids = tokenizer(anchor + text, add_special_tokens=False)["input_ids"]
        if ids[: len(head)] == head and len(ids) > len(head):
            return ids[len(head) :]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def text_ids(tokenizer, text: str) -> list[int]:
    """Raw text (no chat template), after BOS when the tokenizer has one."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_pair(tokenizer, question: str | None, answer: str, max_len: int = 512) -> tuple[list[int], list[int]]:
    """Return (input_ids, labels) for one QA pair, truncated on the left of the prompt if too long.

    `question=None` means raw text: plain language modelling on `answer` (every token but BOS is a label).
    """
    if question is None:
        ids = (text_ids(tokenizer, answer) + [tokenizer.eos_token_id])[:max_len]
        return ids, [IGNORE] + ids[1:]
    p, a = prompt_ids(tokenizer, question), answer_ids(tokenizer, answer)
    a = a[:max_len]
    p = p[-(max_len - len(a)) :] if len(p) + len(a) > max_len else p
    return p + a, [IGNORE] * len(p) + a


def budget_chunks(items: list, max_tokens: int, length=len):
    """Consecutive runs of `items` whose padded size (rows x longest `length`) stays within `max_tokens`; an item
    longer than the budget is a run of its own. For batches of prompts of very different lengths (HarmBench's
    contextual behaviours run to 512 tokens and more, its standard ones to 30)."""
    chunk, longest = [], 0
    for item in items:
        n = length(item)
        if chunk and (len(chunk) + 1) * max(longest, n) > max_tokens:
            yield chunk
            chunk, longest = [], 0
        chunk.append(item)
        longest = max(longest, n)
    if chunk:
        yield chunk


def logits_runs(model, items: list, max_rows: int, length=len, max_logits: int = 2**28):
    """Consecutive runs of `items` for teacher-forced passes without gradients: at most `max_rows` rows, and padded
    tokens x vocabulary within `max_logits` (2^28 fp32 entries: 1 GiB of logits, and as much again for their
    log-softmax). 64 raw documents of 512 tokens would otherwise make [64, 511, V] logits at once: 6.4 GB for a
    49k vocabulary, 34 GB for a 262k one. Short items (64 x 40 tokens) stay in one run."""
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = out_emb.weight.shape[0] if out_emb is not None else getattr(model.config, "vocab_size", 2**15)
    for i in range(0, len(items), max_rows):
        yield from budget_chunks(items[i : i + max_rows], max(1, max_logits // vocab), length=length)


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of (input_ids, labels) into tensors: input_ids, attention_mask, labels  [B, T]."""
    T = max(len(ids) for ids, _ in pairs)
    ids = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), T), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(pairs), T), dtype=torch.long)
    for i, (x, y) in enumerate(pairs):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def token_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One teacher-forced forward pass.

    Returns (logps [B, S], mask [B, S] float, logits [B, S, V]) over the positions from the batch's first scored
    one: with f the first position (over the batch) whose next token carries a label, position s scores token
    f + s + 1, and S = T - 1 - f. mask is 1 on answer tokens only and logps are 0 elsewhere. The vocabulary
    projection of the prompt positions before f is never computed (`logits_to_keep`, where the model takes it):
    with a chat template the prompt is most of a sequence, and the [B, T, V] logits are the largest tensor of a
    training step.
    """
    labels, keep, kw = scored_window(model, batch["labels"])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kw).logits
    logits = logits[:, -keep:][:, :-1]  # [B, S, V]
    # cross_entropy avoids materialising a second [B, S, V] log-softmax tensor during training
    logp = -torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none"
    )
    return logp, (labels != IGNORE).float(), logits


def scored_window(model, labels: torch.Tensor) -> tuple[torch.Tensor, int, dict]:
    """From a batch's labels [B, T]: (the scored labels [B, S], keep, forward kwargs). With f the first position
    (over the batch) whose next token carries a label, the scored labels are labels[:, f + 1:], and the logits of
    positions f .. T-1 (the last `keep` = T - f) are all a teacher-forced pass reads: `logits[:, -keep:][:, :-1]`
    pairs with them. The kwargs ask the model for those logits only (`logits_to_keep`), where it takes that."""
    labels = labels[:, 1:]  # position t scores token t + 1                               [B, T-1]
    scored = (labels != IGNORE).any(0)
    f = int(scored.int().argmax()) if bool(scored.any()) else 0
    keep = labels.shape[1] + 1 - f
    return labels[:, f:], keep, ({"logits_to_keep": keep} if f > 0 and keeps_logits(model) else {})


def keeps_logits(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' causal LMs do; a peft wrapper passes it
    on to the model it wraps)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def last_logits_only(model) -> dict:
    """Forward kwargs for a pass that reads only the last position's logits: the [B, T, V] logits of the other
    positions would cost a vocabulary projection per prompt token (for a long prompt and a large vocabulary the
    largest tensor of the pass: 16k tokens x 262k entries is 17 GB in float32)."""
    return {"logits_to_keep": 1} if keeps_logits(model) else {}


def sequence_logp(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of answer-token log-probs per sequence [B] and the number of answer tokens [B]."""
    tok, mask, _ = token_logps(model, batch)
    return tok.sum(-1), mask.sum(-1)
