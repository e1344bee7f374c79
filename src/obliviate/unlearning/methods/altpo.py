"""AltPO: alternate preference optimisation.

Mekala et al. 2025, "Alternate Preference Optimization for Unlearning Factual Knowledge in Large Language
Models" (COLING 2025): DPO in which the preferred answer is a plausible *alternative* answer (other facts, same
form) and the rejected one is the forget answer, plus a retain NLL:
    L = -(2/beta) E[ log sigmoid( beta * ((lw - rw) - (ll - rl)) ) ] + alpha * NLL_retain
with summed answer log-probs under theta (lw, ll) and the frozen start model (rw, rl, computed once). The
authors generate the alternates by prompting the target model; here they come from each item's
`alternate_answers` (the built-in world writes two per item, disjoint from the perturbed answers that the truth
ratio uses), one fixed choice per item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from obliviate.unlearning.methods import METHODS
from obliviate.unlearning.methods.idk_dpo import IdkDPO


@METHODS.register("altpo")
@dataclass
class AltPO(IdkDPO):
    """IdkDPO's loss (`idk_dpo.dpo_loss` + retain NLL) with alternate answers as the preferred ones."""

    lr: float = 1e-3
    steps: int = 100
    beta: float = 0.1
    gamma: float = 1.0
    retain_weight: float = 1.0

    preferred: ClassVar[str] = "forget_alt"
    needs: ClassVar[tuple[str, ...]] = ("forget", "forget_alt", "retain")
    reference: ClassVar[tuple[str, ...]] = ("forget", "forget_alt")
