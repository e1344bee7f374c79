"""Fine-tuning attack on refusals: LoRA on a handful of harmful (fictional) examples (Lermen et al. 2023, "LoRA
Fine-tuning Efficiently Undoes Safety Training in Llama 2-Chat 70B", arXiv:2310.20624; Qi et al. 2024,
"Fine-tuning Aligned Language Models Compromises Safety, Even When Users Do Not Intend To", ICLR 2024).

The attacker fine-tunes LoRA adapters (rank `lora_r`) for `steps` steps on `n_examples` harmful prompts paired
with their harmful answers from `policy_train` (never the test prompts), then the refusal metrics are measured on
`policy_test`. Figures: `refusal_rate_before`, `refusal_rate_after`, `refusal_rate@prefill20_after`,
`over_refusal_rate_after`. Budget: `n_examples`, `steps`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from obliviate.attacks import ATTACKS, Attack, AuditContext
from obliviate.errors import UsageError


@ATTACKS.register("finetune")
@dataclass
class FinetuneAttack(Attack):
    n_examples: int = 32
    steps: int = 30
    lr: float = 1e-3
    lora_r: int = 8
    suites = ("refusal",)
    description = "LoRA fine-tuning on a few harmful examples"

    def __post_init__(self):
        if self.n_examples < 1 or self.steps < 1 or self.lr <= 0 or self.lora_r < 0:
            raise UsageError("finetune: n_examples >= 1, steps >= 1, lr > 0, lora_r >= 0 (0 = full weights)")

    def run(self, ctx: AuditContext, model, tok) -> dict:
        from obliviate.suites.refusal import policy_rows
        from obliviate.suites.refusal_eval import refusal_rates
        from obliviate.train import FineTune, TrainConfig, train

        harmful = [r for r in policy_rows(ctx.data, "policy_train") if r["kind"] == "harmful"]
        shots = random.Random(ctx.seed).sample(harmful, min(self.n_examples, len(harmful)))
        test = ctx.policy()
        before = refusal_rates(model, tok, test, depths=(), max_new_tokens=ctx.max_new_tokens)
        cfg = TrainConfig(retain_batch_size=min(16, len(shots)), seed=ctx.seed, checkpoint_every=0, progress=False,
                          lora_r=self.lora_r)
        model, _ = train(model, tok, FineTune(lr=self.lr, steps=self.steps),
                         {"retain": [(r["prompt"], r["answer"]) for r in shots]}, cfg)
        after = refusal_rates(model, tok, test, depths=(20,), max_new_tokens=ctx.max_new_tokens)
        return {"refusal_rate_before": before["refusal_rate"], "refusal_rate_after": after["refusal_rate"],
                "refusal_rate@prefill20_after": after["refusal_rate@prefill20"],
                "over_refusal_rate_after": after["over_refusal_rate"]}
