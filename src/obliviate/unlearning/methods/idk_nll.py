"""IdkNLL: fine-tune the forget questions towards an "I don't know" answer, plus retain NLL.

Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs", sec. 4 ("Preference Optimization",
the IDK variant without a preference term): L = NLL(idk | x_forget) + alpha * NLL_retain.
Each forget item gets one fixed answer from the IDK pool (a seeded choice), see `train.idk_answers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from obliviate.engine.method import Method, nll_loss, retain_nll
from obliviate.models.encode import sequence_logp
from obliviate.unlearning.methods import METHODS


def idk_nll_loss(idk_logp: torch.Tensor, idk_n: torch.Tensor, retain_nll_value: torch.Tensor, alpha: float):
    """L = NLL(idk answers) + alpha * NLL_retain. idk_logp, idk_n [B]; retain_nll_value scalar."""
    return nll_loss(idk_logp, idk_n) + alpha * retain_nll_value


@METHODS.register("idk_nll")
@dataclass
class IdkNLL(Method):
    lr: float = 1e-3
    steps: int = 100
    retain_weight: float = 1.0

    needs: ClassVar[tuple[str, ...]] = ("forget_idk", "retain")

    splits: ClassVar[bool] = True

    def loss(self, model, batch, ref_model=None):
        idk_logp, idk_n = sequence_logp(model, batch["forget_idk"])
        retain = retain_nll(model, batch)
        loss = idk_nll_loss(idk_logp, idk_n, retain, self.retain_weight)
        return loss, {"idk_nll": -(idk_logp.sum() / idk_n.sum()).item(), "retain_nll": retain.item()}

    def part_loss(self, model, name, part, ref_model=None):
        nll = nll_loss(*sequence_logp(model, part))
        if name == "forget_idk":
            return nll, {"idk_nll": nll.item()}
        return self.retain_weight * nll, {"retain_nll": nll.item()}
