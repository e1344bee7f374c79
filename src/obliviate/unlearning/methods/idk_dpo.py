"""IdkDPO: DPO with the "I don't know" answer preferred over the forget answer, plus retain NLL.

Rafailov et al. 2023, "Direct Preference Optimization", eq. 7, used for unlearning by TOFU (Maini et al.
2024, sec. 4):  L_DPO = -(2/beta) E[ log sigmoid( beta * ((lw - rw) - (ll - rl)) ) ]
with lw/ll the summed log-probs of the preferred (idk) / rejected (forget) answers and rw/rl the same under
the frozen reference. The 2/beta scale follows OpenUnlearning's code (the paper has 1); it only rescales the
gradient. Reference log-probs are computed once before training. Total: gamma * L_DPO + alpha * NLL_retain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from obliviate.engine.method import Method, retain_nll
from obliviate.models.encode import sequence_logp
from obliviate.unlearning.methods import METHODS


def dpo_loss(win_logp, win_ref, lose_logp, lose_ref, beta: float) -> torch.Tensor:
    """All arguments [B] summed answer log-probs (theta and reference) for the preferred / rejected answers."""
    margin = (win_logp - win_ref) - (lose_logp - lose_ref)
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()


@METHODS.register("idk_dpo")
@dataclass
class IdkDPO(Method):
    lr: float = 3e-3  # tuned on the world (forget10); 1e-3 barely moves the forget answers
    steps: int = 100
    beta: float = 0.1
    gamma: float = 1.0
    retain_weight: float = 1.0

    preferred: ClassVar[str] = "forget_idk"  # the batch part holding the preferred answers
    needs: ClassVar[tuple[str, ...]] = ("forget", "forget_idk", "retain")
    reference: ClassVar[tuple[str, ...]] = ("forget", "forget_idk")

    def loss(self, model, batch, ref_model=None):
        win, _ = sequence_logp(model, batch[self.preferred])
        lose, _ = sequence_logp(model, batch["forget"])
        dpo = dpo_loss(win, batch[self.preferred]["ref_logp"], lose, batch["forget"]["ref_logp"], self.beta)
        retain = retain_nll(model, batch)
        return self.gamma * dpo + self.retain_weight * retain, {"dpo": dpo.item(), "retain_nll": retain.item()}
