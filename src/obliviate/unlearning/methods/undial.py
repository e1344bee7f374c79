"""UNDIAL: self-distillation towards adjusted logits.

Dong et al. 2025, "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large Language
Models" (NAACL 2025): the teacher is the frozen starting model; its logits with the true next token lowered by
a fixed strength (gamma in the paper, `beta` in OpenUnlearning's code and here),
    q_t = softmax(z_ref_t - beta * onehot(y_t)),    L_f = mean_t CE(z_theta_t, q_t),
Total: gamma * L_f + alpha * NLL_retain (the paper uses no retain set: alpha 0). The code averages over every
position, prompt and padding included (at padding the label -100 even wraps to a real vocabulary id); we
average over answer tokens only. The teacher's full distributions are needed, so UNDIAL keeps a frozen copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from obliviate.engine.method import Method, retain_nll
from obliviate.unlearning.methods import METHODS
from obliviate.unlearning.methods._token import answer_logits, masked_mean


def undial_loss(logits, ref_logits, targets, mask, beta: float) -> torch.Tensor:
    """logits, ref_logits [B, T, V]; targets, mask [B, T]."""
    adjusted = ref_logits - beta * F.one_hot(targets, ref_logits.shape[-1]).to(ref_logits.dtype)
    q = torch.softmax(adjusted, -1)
    ce = -(q * torch.log_softmax(logits, -1)).sum(-1)
    return masked_mean(ce, mask)


@METHODS.register("undial")
@dataclass
class UNDIAL(Method):
    lr: float = 1e-3
    steps: int = 100
    beta: float = 10.0
    gamma: float = 1.0
    # The paper uses no retain set; on the world that costs 30-50% of utility (lr 1e-4..1e-3), so the tuned
    # default adds a retain NLL (world forget10: FQ 8e-7 at 0.99x utility).
    retain_weight: float = 1.0

    live_reference: ClassVar[bool] = True

    def loss(self, model, batch, ref_model=None):
        f = batch["forget"]
        logits, targets, mask = answer_logits(model, f)
        with torch.no_grad():
            ref_logits, _, _ = answer_logits(ref_model, f)
        forget = undial_loss(logits, ref_logits, targets, mask, self.beta)
        logs = {"undial": forget.item()}
        loss = self.gamma * forget
        if self.retain_weight > 0:
            retain = retain_nll(model, batch)
            loss, logs["retain_nll"] = loss + self.retain_weight * retain, retain.item()
        return loss, logs
