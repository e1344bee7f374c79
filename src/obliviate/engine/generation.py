"""The one decode loop: batched greedy decoding over a KV cache, with the hooks inference-time guards use.

`decode(model, tok, prompts, guards=...)` returns one `Reply` per prompt; `generate(...)` is its text-only form,
and with no guard it returns what `model.generate(do_sample=False)` returns (test). `sampling=Sampling(...)`
(`engine.sampling`) draws each token from the logits the guards leave instead of taking their argmax. Per batch (prompts sorted by
length, left-padded, so position -1 is every row's next-token position):

    on_request(text)                      every guard scores the request's text -> Reply.scores[guard]
    edit_embeddings(embeds, mask, rows)   prefill only: input embeddings [B, T, d] may be edited (ECO)
    taps() + on_prefill(hidden, rows, s)  after prefill: hidden {(layer, pos): [B, d]} of the prompt at the taps
                                          ([B, T, d] for pos None) (latent guard); `s` is the Session, whose
                                          prompt_ids [B, T] it may read, and which may also probe or halt (ADA)
    process_logits(step, ids, logits, rows)  every step: logits [B, V] may be edited (GUARD); ids [B, step]
    on_step(step, ids, session)           every `guard.every` tokens: may probe the cache (ADA) and halt rows
    on_finish(text, row)                  last word on the text: may halt
    edit_routing(layer, router_logits)    MoE routers (expert steering), installed for the whole call

A halted row stops decoding; its reply becomes the guard's refusal with finish_reason "content_filter".
Guards run in the order given. Rows are per-batch; `row.index` is the prompt's index in the input.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch

from obliviate.engine.sampling import Sampling, pick
from obliviate.models.encode import last_logits_only, stop_ids


def left_pad(prompts: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [B, T], left-padded: position -1 is every prompt's next-token position."""
    T = max(map(len, prompts))
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, T - len(p) :] = torch.tensor(p)
        mask[r, T - len(p) :] = 1
    return ids.to(device), mask.to(device)


@dataclass
class Row:
    """One prompt in a batch, as guards see it."""

    index: int  # position in decode()'s input
    text: str | None  # the request's text (the user's message), when given
    scores: dict[str, float] = field(default_factory=dict)  # guard name -> on_request / on_prefill score
    halted_by: str | None = None
    refusal: str | None = None


@dataclass
class Reply:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS), "length" (max_new_tokens) or "content_filter" (a guard halted it)
    scores: dict[str, float] = field(default_factory=dict)
    halted_by: str | None = None


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids from a left-padded mask, as transformers' generate builds them (pads get 0)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


class Session:
    """The batch in flight, for `on_step`: its rows, cache and mask, and `probe` to look ahead without a trace."""

    def __init__(self, model, tok, rows: list[Row], cache, mask: torch.Tensor, ids: torch.Tensor):
        self.model, self.tok, self.rows, self.cache, self.mask = model, tok, rows, cache, mask
        self.prompt_ids = ids  # [B, T] the left-padded prompts
        self.active = torch.ones(len(rows), dtype=torch.bool)

    def forward(self, ids: torch.Tensor, hidden: bool = False):
        """Run ids [B, k] on the cache (which grows by k) and extend the mask."""
        self.mask = torch.cat([self.mask, torch.ones_like(ids)], 1)
        pos = _positions(self.mask)[:, -ids.shape[1] :]
        return self.model(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=pos,
            cache=self.cache,
            use_cache=True,
            output_hidden_states=hidden,
        )

    @torch.no_grad()
    def probe(self, extra_ids: list[int], lookahead: int = 0, hidden: bool = False) -> dict:
        """Feed `extra_ids` (the same tokens to every row) then `lookahead` greedy tokens, and crop the cache and
        mask back exactly. Returns {"logits": [B, V] after extra_ids, "hidden": tuple of [B, k, d] per layer
        (hidden=True), "lookahead": [B, lookahead] token ids}."""
        # int(): from transformers 5.25 a linear-attention layer's length is a tensor that grows in place
        n0, mask0 = int(self.cache.get_seq_length()), self.mask
        device = mask0.device
        restore = _rewind_point(self.cache, len(extra_ids))
        try:
            out = self.forward(torch.tensor([extra_ids] * len(self.rows), device=device), hidden=hidden)
            res = {"logits": out.logits[:, -1].float(), "hidden": out.hidden_states if hidden else None}
            nxt, more = out.logits[:, -1].argmax(-1), []
            for _ in range(lookahead):
                more.append(nxt)
                nxt = self.forward(nxt[:, None]).logits[:, -1].argmax(-1)
            res["lookahead"] = torch.stack(more, 1) if more else torch.empty(len(self.rows), 0, dtype=torch.long)
            return res
        finally:
            self.cache.crop(n0 - int(self.cache.get_seq_length()))  # a negative count removes that many tokens
            restore()
            self.mask = mask0

    def halt(self, r: int, by: str, refusal: str) -> None:
        if self.active[r]:
            self.active[r] = False
            self.rows[r].halted_by, self.rows[r].refusal = by, refusal


def _rewind_point(cache, first_forward: int) -> Callable[[], None]:
    """Make `cache.crop(-n)` able to undo the next n tokens, and return what restores the rest afterwards.
    `first_forward`: how many tokens the next forward feeds at once (single tokens follow).

    A full-attention layer crops back exactly. A sliding-window layer keeps only its last `window - 1` keys, and a
    short-convolution layer (hybrid models) only its last kernel's inputs, so once the window is full a crop has
    nothing to give back (transformers raises): both are told to record their past, transformers' own rollback
    for assisted decoding, and the crop trims them back to size. A recurrent (linear-attention, SSM) state is
    updated in place and no crop undoes it, so it is cloned here and copied back. From transformers 5.25 on, the
    crop of a linear-attention layer also rolls its recurrent state back from a history of the states it recorded,
    and a multi-token forward records only the `recurrent_states_to_keep` last of them: it is given `first_forward`,
    so the history reaches back to before the probe (the clones copied back afterwards are then the same values)."""
    layers = getattr(cache, "layers", [])
    recording = [(layer, layer.record_past) for layer in layers if hasattr(layer, "record_past")]
    for layer, _ in recording:
        if "recurrent_states_to_keep" in inspect.signature(layer.activate_past_recording).parameters:
            layer.activate_past_recording(recurrent_states_to_keep=first_forward)
        else:
            layer.activate_past_recording()
    states = [
        (layer.recurrent_states, i, t.clone())
        for layer in layers
        for i, t in (getattr(layer, "recurrent_states", None) or {}).items()
        if t is not None
    ]

    def restore() -> None:
        for layer, was in recording:
            layer.record_past = was
        for d, i, t in states:
            d[i] = t  # the clone itself: the probe wrote into the tensor that was there

    return restore


def prefill_embeddings(model, guards, ids: torch.Tensor, editable: torch.Tensor, rows: list[Row]) -> torch.Tensor:
    """Input embeddings [B, T, d] after the guards' prefill-time hooks: `on_request` scores each row's text, then
    `edit_embeddings` may edit the positions marked in `editable` [B, T] (the prompt's tokens). Shared by the
    decode loop and the teacher-forced pass of `evaluate`, so likelihood metrics see what generation sees."""
    for g in _hooked(guards, "on_request"):
        for row in rows:
            score = g.on_request(row.text)
            if score is not None:
                row.scores[g.name] = float(score)
    embeds = model.get_input_embeddings()(ids)
    for g in _hooked(guards, "edit_embeddings"):
        embeds = g.edit_embeddings(embeds, editable, rows)
    return embeds


def prefill(model, tok, guards, ids: torch.Tensor, mask: torch.Tensor, rows: list[Row], taps) -> tuple:
    """Run left-padded prompts ids/mask [B, T] through the model on a fresh KV cache, with the guards' prefill hooks
    (`on_request`, `edit_embeddings`; then `on_prefill` with the hidden states at `taps`, {(layer, pos)}).
    Returns (the Session over that cache, the last position's logits [B, V] in fp32). `decode` and the server's
    continuous batch (`serve/batch.py`) both start a batch here."""
    from transformers import DynamicCache

    embeds = prefill_embeddings(model, guards, ids, mask, rows)
    cache = DynamicCache(config=model.config)
    # only the last position's logits are read (most of a prefill's compute for a large vocabulary, such as Gemma's)
    out = model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=_positions(mask),
        cache=cache,
        use_cache=True,
        output_hidden_states=bool(taps),
        **last_logits_only(model),
    )
    session = Session(model, tok, rows, cache, mask, ids)
    hidden = {
        (layer, pos): (out.hidden_states[layer] if pos is None else out.hidden_states[layer][:, pos]).float()
        for layer, pos in taps
    }
    for g in _hooked(guards, "on_prefill"):
        g.on_prefill(hidden, rows, session)
    return session, out.logits[:, -1].float()


def _hooked(guards, name):
    from obliviate.engine.hooks import overrides

    return [g for g in guards if overrides(g, name)]


@torch.no_grad()
def _decode_batch(
    model,
    tok,
    prompts,
    rows: list[Row],
    guards,
    max_new_tokens: int,
    on_token: Callable[[int, int], None] | None,
    choose: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[Reply]:
    device = next(model.parameters()).device
    pad, eos_ids = tok.pad_token_id, stop_ids(tok, model)
    ids, mask = left_pad(prompts, pad if pad is not None else 0, device)
    taps = {t for g in _hooked(guards, "taps") for t in g.taps()}
    session, logits = prefill(model, tok, guards, ids, mask, rows, taps)
    gen = torch.empty(len(rows), 0, dtype=torch.long, device=device)
    done = torch.zeros(len(rows), dtype=torch.bool, device=device)
    lengths = torch.zeros(len(rows), dtype=torch.long, device=device)  # tokens generated while live (EOS included)
    stepped = [g for g in _hooked(guards, "on_step") if getattr(g, "every", 0) > 0]
    for step in range(max_new_tokens):
        for g in _hooked(guards, "process_logits"):
            logits = g.process_logits(step, gen, logits, rows)
        nxt = logits.argmax(-1) if choose is None else choose(logits)
        live = ~done & session.active.to(device)
        nxt = torch.where(live, nxt, torch.full_like(nxt, pad if pad is not None else 0))
        gen = torch.cat([gen, nxt[:, None]], 1)
        lengths += live.long()
        if on_token is not None:
            for r in live.nonzero().flatten().tolist():
                on_token(rows[r].index, int(nxt[r]))
        done |= live & torch.tensor([int(t) in eos_ids for t in nxt.tolist()], device=device)
        if bool((done | ~session.active.to(device)).all()) or step == max_new_tokens - 1:
            break
        logits = session.forward(nxt[:, None]).logits[:, -1].float()
        for g in stepped:
            if (step + 1) % g.every == 0:
                g.on_step(step + 1, gen, session)
    replies = []
    done = done.cpu()
    for r, row in enumerate(rows):
        toks = gen[r, : int(lengths[r])].tolist()  # up to its EOS or its halt, without the padding after
        text = tok.decode(toks, skip_special_tokens=True).strip()
        for g in _hooked(guards, "on_finish"):
            if row.halted_by is None:
                g.on_finish(text, row)
        if row.halted_by is not None:
            replies.append(Reply(row.refusal or "", toks, "content_filter", row.scores, row.halted_by))
        else:
            replies.append(Reply(text, toks, "stop" if done[r] else "length", row.scores))
    return replies


def batches(prompts: list[list[int]], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices of `prompts` sorted by length and cut into batches of at most `batch_size` rows and at most
    `max_batch_tokens` padded prompt tokens (rows x longest), so long prompts (HarmBench's contextual behaviours)
    do not blow up memory while short ones still share a batch."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out, cur = [], []
    for i in order:
        if cur and (len(cur) >= batch_size or (len(cur) + 1) * len(prompts[i]) > max_batch_tokens):
            out.append(cur)
            cur = []
        cur.append(i)
    return out + [cur] if cur else out


def decode(
    model,
    tok,
    prompts: list[list[int]],
    *,
    texts: list[str] | None = None,
    guards=None,
    max_new_tokens: int = 48,
    batch_size: int = 64,
    max_batch_tokens: int = 32768,
    on_token: Callable[[int, int], None] | None = None,
    sampling: Sampling | None = None,
) -> list[Reply]:
    """Greedy replies to token-id prompts, in the input order, through `guards` (see the module docstring).
    `texts` are the requests' texts for `on_request` (default: each prompt decoded without special tokens);
    `guards=None` means the guards attached to the model (`obliviate.engine.hooks.attach`), if any;
    `on_token(index, token_id)` sees every token as decoded; `sampling` draws tokens instead (one seeded generator
    for the whole call)."""
    from obliviate.engine.hooks import attached, routing_hooks

    choose = None
    if sampling is not None:
        generator = sampling.generator(next(model.parameters()).device)
        choose = lambda logits: pick(logits, sampling, generator)  # noqa: E731
    guards = attached(model) if guards is None else list(guards)
    if guards and texts is None:
        texts = [tok.decode(p, skip_special_tokens=True) for p in prompts]
    model.eval()
    out: list[Reply | None] = [None] * len(prompts)
    with routing_hooks(model, guards):
        for idx in batches(prompts, batch_size, max_batch_tokens):
            rows = [Row(i, texts[i] if texts is not None else None) for i in idx]
            batch = [prompts[i] for i in idx]
            for i, rep in zip(
                idx, _decode_batch(model, tok, batch, rows, list(guards), max_new_tokens, on_token, choose)
            ):
                out[i] = rep
    return out  # type: ignore[return-value]


def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int = 48,
    batch_size: int = 64,
    guards=None,
    texts: list[str] | None = None,
    sampling: Sampling | None = None,
) -> list[str]:
    """Greedy (or, with `sampling`, sampled) continuations of token-id prompts, decoded without special tokens, in
    the input order."""
    return [
        r.text
        for r in decode(
            model,
            tokenizer,
            prompts,
            texts=texts,
            guards=guards,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            sampling=sampling,
        )
    ]
