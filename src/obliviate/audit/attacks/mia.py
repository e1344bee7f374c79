"""Membership inference as an attack: can an auditor still tell the forgotten items from never-seen ones?

The four scores of `obliviate.metrics.mia`, computed from the rows of `obliviate.engine.evaluate.score_split` exactly as
`obliviate eval` does (nothing is re-implemented here): LOSS (Yeom et al. 2018), zlib (Carlini et al. 2021,
sec. 5.1), Min-K% (Shi et al. 2024, eq. 2) and Min-K%++ (Zhang et al. 2025, eq. 4); each as the ROC AUC of
forget items (members, label 1) against holdout items (people from the same distribution never trained on).

Read beside the oracle: the oracle never saw either set, so its AUCs sit near 0.5 and are the goal; the target
sits near 1. An unlearned model near 1 still "remembers" its forget set; one far below 0.5 has been pushed past
never-seen (over-unlearning, which is itself detectable: MUSE's PrivLeak, Shi et al. 2025 sec. 3.3, reads the
same AUC relative to the oracle's). `forget_loss` / `holdout_loss` are the mean answer NLLs behind the AUCs.

The holdout items are the data's holdout file (world `holdout.jsonl`, TOFU `holdout{pct}.json`) or `--holdout
FILE`; without one the audit skips the attack. Budget: `max_items` forget and as many holdout items (a seeded
sample of each; also capped by the audit's `limit`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from obliviate.audit.attacks import ATTACKS, Attack, AuditContext
from obliviate.core.errors import UsageError


def sample(items: list, k: int | None, seed: int) -> list:
    """A seeded sample of at most k items, in their original order (all of them when k is None or large)."""
    if k is None or k >= len(items):
        return list(items)
    keep = set(random.Random(seed).sample(range(len(items)), k))
    return [it for i, it in enumerate(items) if i in keep]


@ATTACKS.register("mia")
@dataclass
class MembershipInference(Attack):
    max_items: int = 100
    batch_size: int = 32
    description = "LOSS / zlib / Min-K% / Min-K%++ AUC, forget vs holdout"

    def __post_init__(self):
        if self.max_items < 2 or self.batch_size < 1:
            raise UsageError("mia: max_items >= 2 and batch_size >= 1")

    def missing(self, ctx: AuditContext) -> str | None:
        if not ctx.holdout_items():
            return (
                "no holdout set (never-trained items of the forget distribution, the non-members): the data has "
                "no holdout file; give --holdout FILE"
            )
        return None

    def run(self, ctx: AuditContext, model, tok) -> dict:
        from obliviate.engine.evaluate import score_split
        from obliviate.metrics.mia import SCORES, mia_auc

        splits = {"forget": ctx.forget_items(), "holdout": ctx.holdout_items()}
        if not splits["holdout"]:
            raise UsageError(f"mia: {self.missing(ctx)}")
        k = min(self.max_items, ctx.limit or self.max_items)
        rows = {
            s: score_split(
                model, tok, sample(splits[s], k, ctx.seed), batch_size=self.batch_size, max_new_tokens=1
            )  # only the teacher-forced pass is used
            for s in ("forget", "holdout")
        }
        out: dict[str, float | None] = {}
        for name, score in SCORES.items():
            out[f"mia_{name}_auc"] = mia_auc([score(r) for r in rows["forget"]], [score(r) for r in rows["holdout"]])
        for s in ("forget", "holdout"):
            out[f"{s}_loss"] = sum(r["gt_loss"] for r in rows[s]) / len(rows[s])
        out["n_items"] = float(len(rows["forget"]))
        return out
