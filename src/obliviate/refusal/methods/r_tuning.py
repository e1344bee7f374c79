"""R-Tuning: refusal-aware instruction tuning (Zhang et al. 2024, "R-Tuning: Instructing Large Language Models to
Say 'I Don't Know'", NAACL 2024, arXiv:2311.09677).

Refusal-aware data are built from the model's *own* errors (Sec. 3.1): the model answers every training question;
questions it gets right form D1, the ones it gets wrong D0. Then it is fine-tuned on both, with an expression of
certainty appended to D1 answers and of uncertainty to D0 answers (the "padding" style: answer + " I am sure." /
answer + " I am unsure."), or, in the refusal style, D0 answers replaced by an uncertainty answer.

On the built-in world the questions are people facts the target knows (trained) and facts about held-out people
it never saw, so its errors are real: a tiny model answers an unknown person's question with a plausible but wrong
fact. The known questions are a random sample of `known_ratio` x as many as the unknown ones (our choice: with
all 1,600 known facts against 150 unknown ones the uncertainty answer is too rare to be learned; measured: 0% of
unseen unknown people answered "not sure" after 150 steps, against 38-48% with a 1:1 mix), never the items held
back for evaluation. An answer is correct when it contains the fact's value (`QAItem.value`), or when its ROUGE-L recall against
the gold answer is >= 0.9 for data without values. Loss: token-mean NLL on the refusal-aware data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from obliviate.core.errors import UsageError
from obliviate.refusal.methods import REFUSAL_METHODS, RefusalData, RefusalMethod

UNSURE_ANSWER = "I am not sure I know that."
SURE, UNSURE = " I am sure.", " I am unsure."


def is_correct(item, prediction: str) -> bool:
    from obliviate.metrics.tofu import rouge_l_recall

    if item.value:
        return item.value.lower() in prediction.lower()
    return rouge_l_recall(item.answer, prediction) >= 0.9


def refusal_aware_pairs(items, predictions: list[str], style: str) -> list[tuple[str, str]]:
    """R-Tuning's D1/D0 split turned into training pairs."""
    out = []
    for it, pred in zip(items, predictions):
        ok = is_correct(it, pred)
        if style == "padding":
            out.append((it.question, it.answer + (SURE if ok else UNSURE)))
        else:
            out.append((it.question, it.answer if ok else UNSURE_ANSWER))
    return out


def expresses_uncertainty(text: str) -> bool:
    t = text.lower()
    return "unsure" in t or "not sure" in t


@REFUSAL_METHODS.register("r_tuning")
@dataclass
class RTuning(RefusalMethod):
    lr: float = 1e-3
    steps: int = 150
    style: str = "refusal"  # "refusal": D0 answers become UNSURE_ANSWER; "padding": sure/unsure appended
    known_ratio: float = 1.0  # known questions sampled per unknown question
    needs: ClassVar[tuple[str, ...]] = ("rtune",)

    def __post_init__(self):
        super().__post_init__()
        if self.known_ratio <= 0:
            raise UsageError("r_tuning: known_ratio must be > 0")
        if self.style not in ("refusal", "padding"):
            raise UsageError(f"r_tuning: style must be 'refusal' or 'padding', got {self.style!r}")

    def parts(self, data: RefusalData, tokenizer, seed: int = 0, model=None) -> dict[str, list]:
        from obliviate.engine.generation import generate
        from obliviate.models.encode import prompt_ids

        if model is None:
            raise UsageError("r_tuning needs the model to find its own errors")
        import random

        if not data.unknown:
            raise UsageError("r_tuning needs questions the model does not know (held-out facts)")
        pool = [it for it in data.people if it.id not in data.eval_ids]
        k = min(len(pool), round(self.known_ratio * len(data.unknown)))
        items = random.Random(seed).sample(pool, k) + list(data.unknown)
        preds = generate(model, tokenizer, [prompt_ids(tokenizer, it.question) for it in items])
        return {"rtune": refusal_aware_pairs(items, preds, self.style)}
