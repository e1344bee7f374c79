"""Task-vector negation: fine-tune on the forget set, then subtract the scaled difference.

Ilharco et al. 2023, "Editing Models with Task Arithmetic", sec. 3 (forgetting via negation), used as an
unlearning baseline by MUSE (Shi et al. 2024): theta_u = theta_0 - alpha * (theta_ft - theta_0), where
theta_ft is theta_0 fine-tuned with plain NLL on the forget set. MUSE's code uses alpha = 1 (the negated
vector with unit scale). Training steps here are the fine-tuning steps; `finalize` does the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from obliviate.engine.method import Method, nll_loss
from obliviate.models.encode import sequence_logp
from obliviate.unlearning.methods import METHODS


def negate_task_vector(start: torch.Tensor, finetuned: torch.Tensor, alpha: float) -> torch.Tensor:
    """theta_0 - alpha * (theta_ft - theta_0), elementwise."""
    return start - alpha * (finetuned - start)


@METHODS.register("task_vector")
@dataclass
class TaskVector(Method):
    lr: float = 1e-3  # on the world (forget10): FQ 0.04 at 0.87x target utility; 3e-4 barely forgets
    steps: int = 100
    alpha: float = 1.0  # scale of the negated task vector
    retain_weight: float = 0.0  # unused: the fine-tuning phase sees only forget data

    needs: ClassVar[tuple[str, ...]] = ("forget",)

    def begin(self, model) -> None:
        # one CPU copy of the starting weights: task arithmetic needs theta_0 at the end
        self._start = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()}

    splits: ClassVar[bool] = True

    def part_loss(self, model, name, part, ref_model=None):
        loss = nll_loss(*sequence_logp(model, part))  # descend: learn the forget set harder
        return loss, {"forget_nll": loss.item()}

    def finalize(self, model):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(negate_task_vector(self._start[n].to(p.device), p, self.alpha))
        return model
