"""DeRTa: Decoupled Refusal Training (Yuan et al. 2024, "Refuse Whenever You Feel Unsafe: Improving Safety in
LLMs via Decoupled Refusal Training", arXiv:2407.09121).

Two components, each available alone (`mle=False` or `rto=False`) for ablations:

1. **MLE with a harmful response prefix** (Sec. 3.1, Eq. 1): for a harmful query q with harmful answer h and
   refusal r, train on  q -> h[:k] -> r  with the loss on r only:  L = -log p(r | q, h[:k]).
   The authors' data script (RobustNLP/DeRTa `data/train/generate_training_data.py`) cuts the harmful answer at a
   random *word* in [1, |h|-2] and gives every third example no prefix; we cut at a random *token* in
   [1, |h|-1] (the issue asks for token-level prefixes, which is also what the prefill metric inserts) and keep
   the no-prefix share as a parameter, default 1/3 as in that script.
2. **Reinforced Transition Optimisation** (Sec. 3.2, Eq. 2): at *every* position of the full harmful answer,
   predict the first refusal token:  L_RTO = -sum_{i=1..|h|} log p(r_1 | q, h[:i-1])  (token mean over the batch,
   as the reference code averages the token-level cross-entropy). In the authors' data the refusal token is the
   fixed "Sorry"; here it is the first token of each example's own refusal, so the transition leads into a
   refusal that the MLE part teaches to finish. `rto_positions > 0` keeps that many random positions per
   example (position subsampling, to cut compute on long answers); 0 keeps all of them.

Total loss: NLL(prefixed refusal) + NLL(RTO) + NLL(benign) + alpha * NLL(people). RTO alone teaches only the
first refusal token and the model then loops on it (the built-in world's refusal demo: `derta_rto_only` in
docs/benchmarks.md): use both.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from obliviate.core.errors import UsageError
from obliviate.models.encode import IGNORE, answer_ids, prompt_ids
from obliviate.refusal.methods import (
    REFUSAL_METHODS,
    RefusalData,
    RefusalMethod,
    prefixed_refusal,
    sample_prefix_lengths,
)


def rto_example(
    tokenizer, prompt: str, harmful: str, refusal: str, positions: int = 0, rng: random.Random | None = None
) -> tuple[list[int], list[int]]:
    """(input_ids, labels): prompt + full harmful answer, every answer position labelled with the refusal's first
    token (label t is predicted from ids[:t], so position len(prompt) is "refuse before any harmful token")."""
    p, h = prompt_ids(tokenizer, prompt), answer_ids(tokenizer, harmful)[:-1]
    r1 = answer_ids(tokenizer, refusal)[0]
    labels = [r1] * len(h)
    if positions and positions < len(h):
        keep = set((rng or random.Random(0)).sample(range(len(h)), positions))
        labels = [t if i in keep else IGNORE for i, t in enumerate(labels)]
    return p + h, [IGNORE] * len(p) + labels


@REFUSAL_METHODS.register("derta")
@dataclass
class DeRTa(RefusalMethod):
    mle: bool = True
    rto: bool = True
    share_no_prefix: float = 1 / 3  # RobustNLP/DeRTa data script: every third example has no harmful prefix
    copies: int = 4  # prefixed variants per harmful example, each with its own random prefix length
    rto_positions: int = 0  # 0: every position of the harmful answer; n: n random positions per example
    needs: ClassVar[tuple[str, ...]] = ("refusal_prefixed", "rto", "benign", "retain")

    def __post_init__(self):
        super().__post_init__()
        if not (self.mle or self.rto):
            raise UsageError("DeRTa: at least one of mle / rto must be true")
        if not 0 <= self.share_no_prefix <= 1 or self.copies < 1 or self.rto_positions < 0:
            raise UsageError("DeRTa: share_no_prefix in [0, 1], copies >= 1, rto_positions >= 0")
        # an ablation drops a part from the batch entirely (no wasted forward pass)
        self.needs = tuple(
            n
            for n in type(self).needs
            if not (n == "refusal_prefixed" and not self.mle) and not (n == "rto" and not self.rto)
        )

    def parts(self, data: RefusalData, tokenizer, seed: int = 0, model=None) -> dict[str, list]:
        rng = random.Random(seed)
        out = super().parts(data, tokenizer, seed)
        del out["refusal"]
        if self.mle:
            rows = [r for r in data.harmful for _ in range(self.copies)]
            lengths = sample_prefix_lengths(
                [len(answer_ids(tokenizer, r["answer"])) - 1 for r in rows], rng, self.share_no_prefix
            )
            out["refusal_prefixed"] = [
                prefixed_refusal(tokenizer, r["prompt"], r["answer"], r["refusal"], k) for r, k in zip(rows, lengths)
            ]
        if self.rto:
            out["rto"] = [
                rto_example(tokenizer, r["prompt"], r["answer"], r["refusal"], self.rto_positions, rng)
                for r in data.harmful
            ]
        return out
