"""Gradient Ascent (GA): maximise the NLL of the forget answers.

Jang et al. 2023, "Knowledge Unlearning for Mitigating Privacy Risks in Language Models", eq. 1; the TOFU
baseline (Maini et al. 2024, sec. 4). As in TOFU's and OpenUnlearning's code the loss is the negated
token-mean NLL of the batch (HF `-outputs.loss`), not a per-sequence sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from obliviate.engine.method import Method, nll_loss
from obliviate.models.encode import sequence_logp
from obliviate.unlearning.methods import METHODS


def grad_ascent_loss(forget_logp: torch.Tensor, forget_n: torch.Tensor) -> torch.Tensor:
    """L = -NLL_forget. forget_logp [B] summed answer log-probs, forget_n [B] answer lengths."""
    return -nll_loss(forget_logp, forget_n)


@METHODS.register("grad_ascent")
@dataclass
class GradAscent(Method):
    lr: float = 1e-4  # GA has no brake: past ~50 steps utility collapses on the world
    steps: int = 50
    retain_weight: float = 0.0  # GA has no retain term

    needs: ClassVar[tuple[str, ...]] = ("forget",)

    splits: ClassVar[bool] = True

    def part_loss(self, model, name, part, ref_model=None):
        loss = grad_ascent_loss(*sequence_logp(model, part))
        return loss, {"forget_nll": -loss.item()}
