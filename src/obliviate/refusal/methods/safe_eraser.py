"""SafeEraser's prompt-decouple loss (Chen et al. 2025, "SafeEraser: Enhancing Safety in Multimodal Large Language
Models through Multimodal Machine Unlearning", arXiv:2502.12520, Sec. 4).

SafeEraser forgets harmful knowledge with an unlearning loss on the forget set (its best variant is PO: train
the harmful queries toward refusals) and observes *over-forgetting*: the model then refuses safe questions about
the same subject. Its Prompt Decouple (PD) loss adds *decoupled* prompts, safe questions on the forgotten
subject (in the paper, the same image with a harmless question), trained toward their normal answers:

    L = L_forget(PO) + lambda_pd * L_PD + alpha * L_retain

and measures over-forgetting with the Safe Answer Refusal Rate (SARR): the share of safe questions about the
forgotten subjects that the model refuses (see `sarr` in `obliviate.refusal.align`).

In text, the "subject" is the object named in a harmful request; the decoupled prompts are the benign requests
on the same objects. `pd_weight=0` gives SafeEraser without PD (PO + retain only), the over-forgetting baseline.
Unlike refusal SFT, the retain part here is the people facts only: PD is the only benign policy data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from obliviate.core.errors import UsageError
from obliviate.engine.method import nll_loss
from obliviate.models.encode import sequence_logp
from obliviate.refusal.methods import REFUSAL_METHODS, RefusalData, RefusalMethod


def decoupled_pairs(harmful: list[dict], benign: list[dict]) -> list[tuple[str, str]]:
    """Safe (prompt, answer) pairs whose object also appears in a harmful request."""
    objects = {r.get("object") for r in harmful} - {None}  # public prompt sets name no objects
    return [(r["prompt"], r["answer"]) for r in benign if r.get("object") in objects]


@REFUSAL_METHODS.register("safe_eraser")
@dataclass
class SafeEraser(RefusalMethod):
    pd_weight: float = 1.0  # lambda of the prompt-decouple loss; 0 disables PD
    needs: ClassVar[tuple[str, ...]] = ("refusal", "decoupled", "retain")

    def __post_init__(self):
        super().__post_init__()
        if self.pd_weight < 0:
            raise UsageError("safe_eraser: pd_weight must be >= 0")
        if self.pd_weight == 0:
            self.needs = ("refusal", "retain")

    def parts(self, data: RefusalData, tokenizer, seed: int = 0, model=None) -> dict[str, list]:
        out = {
            "refusal": [(r["prompt"], r["refusal"]) for r in data.harmful],
            "retain": [(it.question, it.answer) for it in data.people],
        }
        if self.pd_weight:
            out["decoupled"] = decoupled_pairs(data.harmful, data.benign)
            if not out["decoupled"]:
                raise UsageError(
                    "safe_eraser: no benign request shares an object with a harmful one (the PD "
                    "data; public prompt sets name no objects): --option pd_weight=0 trains without PD"
                )
        return out

    def part_loss(self, model, name, part, ref_model=None):
        # PO (refusal) + alpha * retain + lambda * PD, each a token-mean NLL
        nll = nll_loss(*sequence_logp(model, part))
        log, weight = {
            "refusal": ("po", 1.0),
            "retain": ("retain", self.retain_weight),
            "decoupled": ("pd", self.pd_weight),
        }[name]
        return weight * nll, {log: nll.item()}
