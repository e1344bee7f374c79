"""Token-level helpers shared by the token-reweighting methods (WGA, SatImp, IHL, CE-U, UNDIAL)."""

from __future__ import annotations

import torch

from obliviate.models.encode import IGNORE


def answer_logits(model, part: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shifted logits [B, T-1, V], target ids [B, T-1] (pads clamped to 0) and the answer mask [B, T-1]."""
    logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits[:, :-1].float()
    labels = part["labels"][:, 1:]
    mask = (labels != IGNORE).float()
    return logits, labels.clamp(min=0), mask


def token_logp(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position [B, T]."""
    return torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 (all sequences of the batch pooled)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)
