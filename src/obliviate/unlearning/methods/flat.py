"""FLAT: loss adjustment with only forget data, via the variational form of an f-divergence.

Wang et al. 2025, "LLM Unlearning via Loss Adjustment with Only Forget Data" (ICLR 2025), eq. 4:
    L = -g*(P_e) + f*(g*(P_f))
with P_e the mean token probability of the template ("I don't know") answers, P_f that of the forget
answers, g* the optimal variational function and f* the conjugate of the chosen divergence. Closed forms
(authors' code):   KL:  -P_e + exp(P_f - 1)         TV:  -tanh(P_e)/2 + tanh(P_f)/2
                   Pearson: -P_e + P_f^2/4 + P_f    JS:  log(1+e^-P_e) + log(1+e^P_f) - 2 log 2
As in the code, P is one scalar per batch (a mean over tokens) and Total Variation is the default. The code
averages over all positions including padding; we average over answer tokens only. No retain data, no reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from obliviate.core.errors import UsageError
from obliviate.engine.method import Method
from obliviate.unlearning.methods import METHODS
from obliviate.unlearning.methods._token import answer_logits, masked_mean, token_logp

DIVERGENCES = {
    "kl": lambda pe, pf: -pe + torch.exp(pf - 1),
    "tv": lambda pe, pf: -0.5 * torch.tanh(pe) + 0.5 * torch.tanh(pf),
    "pearson": lambda pe, pf: -pe + pf**2 / 4 + pf,
    "js": lambda pe, pf: F.softplus(-pe) + F.softplus(pf) - 2 * math.log(2),
}


def flat_loss(p_good: torch.Tensor, p_forget: torch.Tensor, divergence: str) -> torch.Tensor:
    """p_good, p_forget: scalar mean token probabilities of the template and forget answers."""
    return DIVERGENCES[divergence](p_good, p_forget)


@METHODS.register("flat")
@dataclass
class FLAT(Method):
    # On the world (forget10): lr 1e-4 and above drive utility to ~0 (no retain term); 3e-5 keeps 0.98x utility
    # but barely forgets (FQ ~1e-28). No lr tried reached both; this default keeps the model usable.
    lr: float = 3e-5
    steps: int = 100
    divergence: str = "tv"
    retain_weight: float = 0.0  # FLAT uses forget data only

    needs: ClassVar[tuple[str, ...]] = ("forget", "forget_idk")

    def __post_init__(self):
        super().__post_init__()
        if self.divergence not in DIVERGENCES:
            raise UsageError(f"flat: divergence must be one of {', '.join(DIVERGENCES)}, got {self.divergence!r}")

    def loss(self, model, batch, ref_model=None):
        probs = []
        for part in ("forget_idk", "forget"):
            logits, targets, mask = answer_logits(model, batch[part])
            probs.append(masked_mean(token_logp(logits, targets).exp(), mask))
        loss = flat_loss(probs[0], probs[1], self.divergence)
        return loss, {"p_template": probs[0].item(), "p_forget": probs[1].item()}
