"""Refusal training methods: teach a model to refuse harmful requests at any depth of its reply, and to keep
answering benign look-alikes. One file per method; importing this package registers them all.

A refusal method is a `Method` (the same training loop as unlearning) with one more hook: `parts(data, tok)`
builds its batch parts from a `RefusalData`. The default parts are

    "refusal": (harmful prompt, refusal)          "benign": (benign prompt, helpful answer)
    "retain":  (people question, answer)          -- utility, so that alignment does not erase knowledge

and the default loss is the token-mean NLL of each part, summed (`retain_weight` scales the people part; at 0 the
part is not computed). A part item is either a (question, answer) pair or an already-encoded (input_ids, labels)
pair, for methods that put unlabelled harmful prefixes into the input (DeRTa, Qi et al.).

These live in their own registry, not in `METHODS`: the unlearning leaderboard iterates `METHODS` over
forget/retain splits, which refusal methods do not take. `obliviate ls refusal-methods` lists them.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from dataclasses import dataclass, field
from typing import ClassVar

from obliviate.core.registry import Registry
from obliviate.data.schema import QAItem
from obliviate.engine.method import Method, nll_loss
from obliviate.models.encode import IGNORE, answer_ids, prompt_ids, sequence_logp

REFUSAL_METHODS: Registry[type["RefusalMethod"]] = Registry("refusal method")


@dataclass
class RefusalData:
    """What refusal methods train on. Rows are policy rows (see `obliviate.data.policy`)."""

    harmful: list[dict]  # {"prompt", "answer" (the harmful answer), "refusal", "category", ...}
    benign: list[dict]  # {"prompt", "answer", ...}
    people: list[QAItem]  # utility QA the model already knows
    unknown: list[QAItem] = field(default_factory=list)  # QA the model never saw (R-Tuning)
    eval_ids: set[str] = field(default_factory=set)  # people items held back for evaluation (R-Tuning skips them)


@dataclass
class RefusalMethod(Method):
    """Vanilla refusal SFT's data and loss; subclasses change `parts` and/or `loss`."""

    lr: float = 1e-3
    steps: int = 200
    needs: ClassVar[tuple[str, ...]] = ("refusal", "benign", "retain")

    def prepare(self, model, tokenizer, data: RefusalData):
        """Called before `parts`: may add tokens (refusal tokens). Returns (model, tokenizer)."""
        return model, tokenizer

    def parts(self, data: RefusalData, tokenizer, seed: int = 0, model=None) -> dict[str, list]:
        return {
            "refusal": [(r["prompt"], r["refusal"]) for r in data.harmful],
            "benign": [(r["prompt"], r["answer"]) for r in data.benign],
            "retain": [(it.question, it.answer) for it in data.people],
        }

    splits: ClassVar[bool] = True  # subclasses that override `loss` set it back to False

    def part_loss(self, model, name, part, ref_model=None):
        if name == "retain" and self.retain_weight == 0:
            return None, {}  # a zero-weight part costs a forward pass for nothing (public data: a second benign part)
        nll = nll_loss(*sequence_logp(model, part))
        return (self.retain_weight if name == "retain" else 1.0) * nll, {f"nll_{name}": nll.item()}


def prefixed_refusal(tokenizer, prompt: str, harmful: str, refusal: str, k: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for `prompt -> first k tokens of the harmful answer -> refusal`, loss on the refusal only.

    The prefix is cut at the token level (no EOS), so it is exactly what a prefill attack of depth k inserts.
    """
    p, h, r = prompt_ids(tokenizer, prompt), answer_ids(tokenizer, harmful)[:-1][:k], answer_ids(tokenizer, refusal)
    return p + h + r, [IGNORE] * (len(p) + len(h)) + r


def sample_prefix_lengths(
    n_tokens: list[int], rng: random.Random, share_no_prefix: float, k_max: int | None = None
) -> list[int]:
    """One prefix length per example: 0 with probability `share_no_prefix`, else uniform in [1, min(n-1, k_max)]."""
    out = []
    for n in n_tokens:
        hi = min(n - 1, k_max) if k_max else n - 1
        out.append(0 if hi < 1 or rng.random() < share_no_prefix else rng.randint(1, hi))
    return out


def load_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


load_all()
