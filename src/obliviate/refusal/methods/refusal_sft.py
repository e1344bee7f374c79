"""Vanilla refusal SFT: the standard safety-tuning baseline that DeRTa and Qi et al. compare against.

Supervised fine-tuning on (harmful prompt -> refusal) pairs mixed with helpful data (benign look-alikes and
people facts), as in the "vanilla" safety data of DeRTa (Yuan et al. 2024, arXiv:2407.09121, Sec. 2) and the
safety SFT of Bianchi et al. 2024 ("Safety-Tuned LLaMAs"). Loss: NLL(refusal) + NLL(benign) + alpha * NLL(people),
each a token mean over its part. The refusal is learned right after the prompt only, so a prefilled harmful
prefix of a few tokens usually undoes it (Qi et al. 2025, Sec. 2): this is the shallow baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.refusal.methods import REFUSAL_METHODS, RefusalMethod


@REFUSAL_METHODS.register("refusal_sft")
@dataclass
class RefusalSFT(RefusalMethod):
    pass
