"""Batched greedy generation with a KV cache: the one function that inference-time guards will wrap."""

from __future__ import annotations

import torch


def left_pad(prompts: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [B, T], left-padded: position -1 is every prompt's next-token position."""
    T = max(map(len, prompts))
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, T - len(p):] = torch.tensor(p)
        mask[r, T - len(p):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int = 48, batch_size: int = 64) -> list[str]:
    """Greedy continuations of token-id prompts, decoded without special tokens, in the input order.

    Prompts are sorted by length and left-padded per batch, so little compute is spent on padding.
    """
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        ids, mask = left_pad([prompts[i] for i in idx], pad, device)
        T = ids.shape[1]
        gen = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
        )
        for r, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[r, T:], skip_special_tokens=True).strip()
    return out
