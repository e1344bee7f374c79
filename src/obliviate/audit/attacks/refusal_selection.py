"""Scoring and choosing refusal-direction candidates from forward passes (Arditi et al. 2024, Appendix C, as their
code `pipeline/submodules/select_direction.py` in andyrdt/refusal_direction does it); the attack and its citations
are in `refusal_direction`, which documents `selection=fast|full`."""

from __future__ import annotations

import math

import torch

from obliviate.engine.generation import left_pad
from obliviate.models.anatomy import decoder_layers
from obliviate.models.encode import budget_chunks, last_logits_only

# prompts per forward pass within this many padded tokens: one batch for short prompts, as the world's
CHUNK_TOKENS = 16384
# `selection=fast`: a chunk of length-sorted prompts pads at most this share over its real tokens
PAD_SLACK = 1.25
SELECTIONS = ("fast", "full")
SCORES = ("bypass", "kl", "induce")  # the order `fast` computes them in: bypass for all, then kl, then induce


def chunks(prompts: list[list[int]], by_length: bool = False) -> list[list[int]]:
    """Indices of `prompts` per forward pass, within CHUNK_TOKENS padded tokens: in file order (`budget_chunks`),
    or, `by_length`, sorted by length and cut where padding would pass PAD_SLACK x the chunk's real tokens."""
    if not by_length:
        return list(budget_chunks(list(range(len(prompts))), CHUNK_TOKENS, length=lambda i: len(prompts[i])))
    out, cur, real = [], [], 0
    for i in sorted(range(len(prompts)), key=lambda i: len(prompts[i])):
        n = len(prompts[i])
        if cur and (len(cur) + 1) * n > min(CHUNK_TOKENS, PAD_SLACK * (real + n)):
            out.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += n
    return out + [cur] if cur else out


@torch.no_grad()
def residuals(model, tok, prompts, n_post: int, by_length: bool = False) -> torch.Tensor:
    """[L, n_post, d]: mean residual stream entering each layer at the last n_post positions (the prompts are left-
    padded, so those are every row's own tokens). Read by hooks at each layer's input, which keep only those
    positions: `output_hidden_states` would hold [L, B, T, d] at once. `by_length`: in `chunks(by_length)`."""
    device, parts, grabbed = next(model.parameters()).device, [], []

    def pre(mod, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        grabbed.append(h[:, -n_post:].float().mean(0))  # [n_post, d]

    handles = [ly.register_forward_pre_hook(pre, with_kwargs=True) for ly in decoder_layers(model)]
    try:
        for idx in chunks(prompts, by_length):
            ids, mask = left_pad([prompts[i] for i in idx], tok.pad_token_id, device)
            grabbed.clear()
            kw = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)} if by_length else {}  # unpadded positions
            model(input_ids=ids, attention_mask=mask, **kw, **last_logits_only(model))
            parts.append((len(idx), torch.stack(grabbed)))
    finally:
        for h in handles:
            h.remove()
    if len(parts) == 1:
        return parts[0][1]
    return sum(n * m for n, m in parts) / len(prompts)


def shared_prefix(prompts: list[list[int]]) -> int:
    """Tokens that every prompt starts with (a chat template's system prompt and user header), leaving each at
    least one of its own; 0 for a single prompt."""
    if len(prompts) < 2:
        return 0
    n = min(map(len, prompts)) - 1
    for q in prompts[1:]:
        n = next((i for i in range(n) if q[i] != prompts[0][i]), n)
    return n


@torch.no_grad()
def last_logprobs(model, tok, prompts, by_length: bool = False) -> torch.Tensor:
    """[B, V] float64 log-probabilities of the next token after each prompt, in the prompts' order. `by_length`:
    the prompts' shared prefix runs once, its keys and values reused by every row (each row's own tokens follow
    it after its padding, at the positions they would have unpadded, as in generation), and the rest goes in
    `chunks(by_length)`. Without it, as before: left-padded full prompts in file order."""
    import copy

    device, out = next(model.parameters()).device, [None] * len(prompts)
    p = shared_prefix(prompts) if by_length else 0
    if p:
        from transformers import DynamicCache

        prefix = DynamicCache(config=model.config)  # filled in place; under the same hooks as the rest
        ids = torch.tensor([prompts[0][:p]], device=device)
        model(input_ids=ids, cache=prefix, use_cache=True, **last_logits_only(model))
    rest = [q[p:] for q in prompts]
    for idx in chunks(rest, by_length):
        ids, mask = left_pad([rest[i] for i in idx], tok.pad_token_id, device)
        kw = {"position_ids": p + (mask.cumsum(-1) - 1).clamp(min=0)} if by_length else {}
        if p:
            cache = copy.deepcopy(prefix)
            if len(idx) > 1:
                cache.batch_repeat_interleave(len(idx))
            kw |= {"cache": cache, "use_cache": True}
            mask = torch.cat([torch.ones(len(idx), p, dtype=mask.dtype, device=device), mask], 1)
        logits = model(input_ids=ids, attention_mask=mask, **kw, **last_logits_only(model)).logits[:, -1]  # [B, V]
        for i, row in zip(idx, torch.log_softmax(logits.double(), -1)):
            out[i] = row
    return torch.stack(out)


def refusal_score(logp: torch.Tensor, refusal_ids: list[int], eps: float = 1e-8) -> torch.Tensor:
    """Log-odds of the refusal tokens per prompt, as the reference code: log(p + eps) - log(1 - p + eps), p the
    summed probability of `refusal_ids` (float64)."""
    p = logp.double()[:, refusal_ids].exp().sum(-1)
    return torch.log(p + eps) - torch.log(1 - p + eps)


def kl_score(base: torch.Tensor, logp: torch.Tensor, eps: float = 1e-6) -> float:
    """Mean over prompts of KL(base || logp) on next-token distributions, as the reference code's `kl_div_fn`:
    sum p (log(p + eps) - log(q + eps)) in float64."""
    p, q = base.double().exp(), logp.double().exp()
    return (p * (torch.log(p + eps) - torch.log(q + eps))).sum(-1).mean().item()


def discarded(c: dict, n_layers: int, kl_max: float, max_layer_frac: float) -> bool:
    """The reference code's `filter_fn` on a candidate's scores computed so far (a missing score cannot save it):
    a NaN score, layer >= int(max_layer_frac L), kl > kl_max or induce < 0."""
    if any(math.isnan(c[k]) for k in SCORES if k in c):
        return True
    return c["layer"] >= int(n_layers * max_layer_frac) or c.get("kl", 0.0) > kl_max or c.get("induce", 0.0) < 0


def choose(cands: list[dict], score, n_layers: int, kl_max: float, max_layer_frac: float, lazy: bool):
    """(best candidate, whether it passed the filters): the lowest bypass among those that pass, else the lowest
    overall; ties go to the earlier candidate. `score(c, key)` sets c[key]. Not `lazy`: every score of every
    candidate first. `lazy`: only what the choice needs (see `refusal_direction`); the same choice."""
    if not lazy:
        for c in cands:
            for k in SCORES:
                score(c, k)
    cut = int(n_layers * max_layer_frac)

    def need(c, k):
        if k not in c:
            score(c, k)
        return c[k]

    def low(c):
        b = need(c, "bypass")
        return math.inf if math.isnan(b) else b

    def passes(c):
        for k in SCORES:  # stops at the first score that discards it
            need(c, k)
            if discarded(c, n_layers, kl_max, max_layer_frac):
                return False
        return True

    below = sorted((c for c in cands if c["layer"] < cut), key=low)  # stable: ties keep the candidates' order
    best = next((c for c in below if passes(c)), None)
    passed = best is not None
    if best is None:
        best = min(cands, key=low)
    for k in SCORES:  # the chosen one's three scores are reported
        need(best, k)
    return best, passed
