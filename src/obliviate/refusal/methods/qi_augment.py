"""Safety-recovery data augmentation (Qi et al. 2025, "Safety Alignment Should Be Made More Than Just a Few
Tokens Deep", ICLR 2025, arXiv:2406.05946, Sec. 3).

Qi et al. augment safety data with *safety recovery examples* (x, h[:k], r): a harmful prompt, the first k
tokens of a harmful answer, then a refusal, with the loss on the refusal only, so that the model learns to
return to a refusal from deep inside a harmful reply. They sample k uniformly from 1 to 100 tokens; the original
(x, r) pairs stay in the mix. Utility data (benign look-alikes and people facts) keep the model helpful.

Differences from DeRTa's MLE part (`derta.py`) are the parameters: k is capped at `k_max` tokens rather than
ranging over the whole harmful answer, the no-prefix share defaults to 1/2 (one recovery example per original
example), and there is no transition loss. Loss: NLL(refusal, with or without prefix) + NLL(benign) +
alpha * NLL(people).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from obliviate.core.errors import UsageError
from obliviate.models.encode import answer_ids
from obliviate.refusal.methods import (
    REFUSAL_METHODS,
    RefusalData,
    RefusalMethod,
    prefixed_refusal,
    sample_prefix_lengths,
)


@REFUSAL_METHODS.register("qi_augment")
@dataclass
class QiAugment(RefusalMethod):
    k_max: int = 100  # Qi et al.: k ~ Uniform[1, 100] tokens (capped at the answer length here)
    share_no_prefix: float = 0.5
    copies: int = 4  # augmented variants per harmful example, each with its own k

    def __post_init__(self):
        super().__post_init__()
        if self.k_max < 1 or not 0 <= self.share_no_prefix <= 1 or self.copies < 1:
            raise UsageError("qi_augment: k_max >= 1, share_no_prefix in [0, 1], copies >= 1")

    def parts(self, data: RefusalData, tokenizer, seed: int = 0, model=None) -> dict[str, list]:
        rng = random.Random(seed)
        out = super().parts(data, tokenizer, seed)
        rows = [r for r in data.harmful for _ in range(self.copies)]
        ks = sample_prefix_lengths(
            [len(answer_ids(tokenizer, r["answer"])) - 1 for r in rows], rng, self.share_no_prefix, self.k_max
        )
        out["refusal"] = [
            prefixed_refusal(tokenizer, r["prompt"], r["answer"], r["refusal"], k) for r, k in zip(rows, ks)
        ]
        return out
