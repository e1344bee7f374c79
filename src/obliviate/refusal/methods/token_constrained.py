"""Token-wise constrained fine-tuning (Qi et al. 2025, "Safety Alignment Should Be Made More Than Just a Few
Tokens Deep", ICLR 2025, arXiv:2406.05946, Sec. 4, Eq. 3).

For fine-tuning an *aligned* model on new data without losing its alignment, the SFT loss is replaced by

    L = E  sum_t  -(2 / beta_t) * log sigmoid(beta_t * d_t),
    d_t = log pi_theta(y_t | x, y_<t) - log pi_aligned(y_t | x, y_<t),

with a large beta_t on the first tokens (which carry the refusal decision) and a small one later:
beta_1 = 0.5, beta_2..5 = 2, beta_t = 0.1 for t > 5. Small beta_t recovers plain cross-entropy; large beta_t stops
the gradient once a token's probability moves away from the aligned model's.

**We follow the reference code (Unispac/shallow-vs-deep-alignment, `soft_sft_loss`), which differs from Eq. 3 in
its value but not its gradient:** each token's NLL is multiplied by the detached weight
w_t = max(2 * (1 - sigmoid(beta_t * d_t)), 1e-3), i.e. loss = mean_t(-w_t * log pi_theta(y_t)), the token mean over
the batch. d/dtheta of Eq. 3 is exactly -w_t * d/dtheta log pi_theta(y_t) (before the clamp), which the authors
call the numerically stable form (their Appendix D.2).

In the refusal suite this fine-tunes an aligned model on harmful examples (a fine-tuning attack), to compare with
plain SFT on the same data: the constrained objective keeps refusals that plain SFT removes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from obliviate.core.errors import UsageError
from obliviate.models.encode import token_logps
from obliviate.refusal.methods import REFUSAL_METHODS, RefusalData, RefusalMethod


def beta_schedule(
    T: int, beta: float = 0.1, bias_factor: float = 20.0, first_token_factor: float = 5.0, bias_length: int = 5
) -> torch.Tensor:
    """beta_t for answer positions 1..T: beta*first_token_factor, then beta*bias_factor up to bias_length, then beta
    (the reference code's parameterisation; its defaults give the paper's 0.5, 2, 2, 2, 2, 0.1, ...)."""
    betas = torch.full((T,), beta)
    betas[:bias_length] = beta * bias_factor
    if bias_length:
        betas[0] = beta * first_token_factor
    return betas


def token_constrained_loss(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, betas: torch.Tensor
) -> torch.Tensor:
    """logp, ref_logp, mask [B, T] (answer tokens where mask = 1, left-aligned per row by `answer_positions`),
    betas [B, T] per-token beta. Returns mean over answer tokens of -w_t * logp_t, w_t = max(2(1-sig(b d)), 1e-3)."""
    w = (2 * (1 - torch.sigmoid(betas * (logp - ref_logp)))).detach().clamp(min=1e-3)
    return -(w * logp * mask).sum() / mask.sum().clamp(min=1)


def answer_positions(mask: torch.Tensor) -> torch.Tensor:
    """[B, T] index of each answer token within its answer (0 for the first), from the label mask."""
    return (mask.cumsum(-1) - 1).clamp(min=0).long()


@REFUSAL_METHODS.register("token_constrained")
@dataclass
class TokenConstrained(RefusalMethod):
    """Fine-tunes on the `finetune` part (pairs given by the caller) against the starting (aligned) model."""

    lr: float = 1e-3
    steps: int = 100
    beta: float = 0.1
    bias_factor: float = 20.0
    first_token_factor: float = 5.0
    bias_length: int = 5
    needs: ClassVar[tuple[str, ...]] = ("finetune",)
    live_reference: ClassVar[bool] = True  # per-token reference log-probs are needed
    splits: ClassVar[bool] = False  # its own loss (position-weighted, against the reference), not a sum of NLLs

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0 or self.bias_length < 0:
            raise UsageError("token_constrained: beta > 0 and bias_length >= 0")

    def parts(self, data: RefusalData, tokenizer, seed: int = 0, model=None) -> dict[str, list]:
        # the fine-tuning data of an attack or a downstream task: here, the harmful answers (an attack)
        return {"finetune": [(r["prompt"], r["answer"]) for r in data.harmful]}

    def loss(self, model, batch, ref_model=None):
        logp, mask, _ = token_logps(model, batch["finetune"])
        with torch.no_grad():
            ref, _, _ = token_logps(ref_model, batch["finetune"])
        pos = answer_positions(mask)
        sched = beta_schedule(
            int(pos.max()) + 1, self.beta, self.bias_factor, self.first_token_factor, self.bias_length
        ).to(logp.device)
        loss = token_constrained_loss(logp, ref, mask, sched[pos])
        return loss, {"nll": (-(logp * mask).sum() / mask.sum()).item()}
