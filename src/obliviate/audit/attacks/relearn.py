"""Relearning attack: fine-tune on a share of the forget set, measure recovery on the *other* forget items.

Lynch et al. 2024 ("Eight Methods to Evaluate Robust Unlearning in LLMs", Sec. 4.6) and Hu et al. 2025
("Unlearning or Obfuscating? Jogging the Memory of Unlearned LLMs via Benign Relearning", ICLR 2025): if a few
steps on some forgotten facts bring back *other* forgotten facts that the attacker never showed, the knowledge was
still in the weights. A model that never learned them (the oracle) can only learn what it is shown, so its
held-out recovery stays low.

The forget items are split at random (seeded) into a relearning share and a held-out rest. Figures, before and
after relearning, on the held-out items: `*_rouge` (ROUGE-L recall of the greedy answer against the gold answer),
`*_value_rouge` (against the fact's value alone) and `*_value_acc` (the value appears in the answer); plus
`recovered_value_rouge` (after - before) and `shown_rouge_after`, which checks that relearning took place.

Read the value figures: the full-answer ROUGE is inflated by the answer template, and relearning teaches even
the oracle to answer "Vyrek Pellam was born in <some town>" for the forget people (measured on the built-in
world: the oracle's held-out full-answer ROUGE goes 0.42 -> 0.79 while its value ROUGE stays low).
Budget: `steps` optimiser steps (full weights, or LoRA with `lora_r` > 0) at `lr`, batch `batch_size` (under the
audit's `--limit N`: 5 steps of 8, unless given, and at most N items of each share measured); memory:
`max_batch_tokens` (micro-batches of at most that many padded tokens, the same gradients; default 1024).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from obliviate.audit.attacks import ATTACKS, Attack, AuditContext, recall_figures, rouge_on
from obliviate.core.errors import UsageError


def split_items(items: list, share: float, seed: int) -> tuple[list, list]:
    """(shown, held out): a seeded random `share` of the items and the rest."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    k = max(1, round(share * len(items)))
    shown = set(order[:k])
    return [items[i] for i in sorted(shown)], [items[i] for i in range(len(items)) if i not in shown]


@ATTACKS.register("relearn")
@dataclass
class Relearn(Attack):
    share: float = 0.5
    # 20 steps at 3e-4: measured on the demo's models, enough for the shown items to come back without
    # disturbing the target's held-out items (at 1e-3 x 30 steps the target itself fell from 0.99 to 0.62)
    steps: int = 20
    lr: float = 3e-4
    batch_size: int = 16
    lora_r: int = 0
    # batches train as micro-batches of at most this many padded tokens (TrainConfig.max_batch_tokens; 0: whole
    # batches): long forget passages (MUSE's, WMDP's corpora; cut to 512 tokens) in batches of 16 are the batches
    # that drove the `finetune` attack past 24 GB on SmolLM2-135M (docs/benchmarks.md, real models)
    max_batch_tokens: int = 1024
    description = "fine-tune on part of the forget set; recovery on the other part"
    quick = {"steps": 5, "batch_size": 8}

    def __post_init__(self):
        if not 0 < self.share < 1 or self.steps < 1 or self.lr <= 0 or self.lora_r < 0 or self.max_batch_tokens < 0:
            raise UsageError("relearn: share in (0, 1), steps >= 1, lr > 0, lora_r >= 0, max_batch_tokens >= 0")

    def missing(self, ctx: AuditContext) -> str | None:
        if len(ctx.forget_items()) < 2:
            return "needs at least 2 forget items (some to relearn on, the others held out)"
        return None

    def run(self, ctx: AuditContext, model, tok) -> dict:
        from obliviate.engine.train import FineTune, TrainConfig, train

        shown, held = split_items(ctx.forget_items(), self.share, ctx.seed)
        if not held:
            raise UsageError("relearn: the forget split is too small to hold items out")
        measured_held, measured_shown = held[: ctx.limit], shown[: ctx.limit]  # trained on every shown item
        _, outs = rouge_on(model, tok, measured_held, ctx.max_new_tokens)
        before = recall_figures(measured_held, outs, "heldout_before")
        cfg = TrainConfig(
            retain_batch_size=self.batch_size,
            seed=ctx.seed,
            checkpoint_every=0,
            progress=False,
            lora_r=self.lora_r,
            max_batch_tokens=self.max_batch_tokens,
        )
        model, _ = train(
            model,
            tok,
            FineTune(lr=self.lr, steps=self.steps),
            {"retain": [(it.question, it.answer) for it in shown]},
            cfg,
        )
        _, outs = rouge_on(model, tok, measured_held, ctx.max_new_tokens)
        after = recall_figures(measured_held, outs, "heldout_after")
        shown_after, _ = rouge_on(model, tok, measured_shown, ctx.max_new_tokens)
        return {
            **before,
            **after,
            "recovered_value_rouge": after["heldout_after_value_rouge"] - before["heldout_before_value_rouge"],
            "shown_rouge_after": shown_after,
        }
