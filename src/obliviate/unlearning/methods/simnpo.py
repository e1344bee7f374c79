"""SimNPO: reference-free, length-normalised NPO.

Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning",
eq. 4:  L = -(2/beta) E[ log sigmoid( -(beta/|y|) log pi_theta(y|x) - gamma_margin ) ].
Following the authors' / OpenUnlearning code, the margin enters as beta * delta:
    L = -(2/beta) E[ log sigmoid( beta * (NLL(y|x)/|y| - delta) ) ]
so the paper's margin is beta * delta. Total: gamma * L + alpha * NLL_retain (code defaults gamma 0.125).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from obliviate.engine.method import Method, nll_loss
from obliviate.models.encode import sequence_logp
from obliviate.unlearning.methods import METHODS


def simnpo_loss(forget_logp: torch.Tensor, forget_n: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """forget_logp [B] summed answer log-probs; forget_n [B] answer lengths."""
    avg_nll = -forget_logp / forget_n.clamp(min=1)
    return -(2.0 / beta) * F.logsigmoid(beta * (avg_nll - delta)).mean()


@METHODS.register("simnpo")
@dataclass
class SimNPO(Method):
    lr: float = 2e-3  # tuned on the world (forget10)
    steps: int = 100
    beta: float = 4.5
    delta: float = 0.0
    gamma: float = 0.125
    retain_weight: float = 1.0

    splits: ClassVar[bool] = True

    def part_mean(self, name):
        return "item" if name == "forget" else "token"  # eq. 4 is a mean over forget items

    def part_loss(self, model, name, part, ref_model=None):
        if name == "forget":
            forget = simnpo_loss(*sequence_logp(model, part), self.beta, self.delta)
            return self.gamma * forget, {"simnpo": forget.item()}
        retain = nll_loss(*sequence_logp(model, part))
        return self.retain_weight * retain, {"retain_nll": retain.item()}
