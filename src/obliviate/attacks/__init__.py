"""Attacks for `obliviate audit`: each tries to bring back what a model was made to forget or to refuse.

One file per attack; importing this package registers them all. An attack is a dataclass with a `budget`-like
parameter (steps, examples, layers...) and a `run(ctx, model, tok)` that returns flat figures
{name: float | None} for one model. The audit runs every attack that applies to the suite on the audited
model and, where given, on the oracle (what "never learned" looks like) and the target (what "learned" looks
like), so each figure sits beside its reference points. Recovery beyond the oracle is the signal.

To add an attack: create `attacks/my_attack.py` with a `@ATTACKS.register("my_attack")` dataclass.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

from obliviate.errors import UsageError
from obliviate.registry import Registry

ATTACKS: Registry[type["Attack"]] = Registry("attack")


@dataclass
class AuditContext:
    """What every attack may read. `data` is the suite's data directory (a world directory)."""

    suite: str  # "world" (unlearning) or "refusal"
    data: Path
    forget_split: str = "forget10"
    seed: int = 0
    max_new_tokens: int = 48
    limit: int | None = None  # cap on evaluation rows, for quick looks and tests
    role: str = "model"  # which model the attack is running on: model | oracle | target
    out: Path | None = None  # where an attack may write artifacts (a direction, an edited model)

    def forget_items(self):
        from obliviate.pipeline import eval_data

        return eval_data(self.data, self.forget_split)["forget"]

    def retain_items(self):
        from obliviate.pipeline import eval_data

        return eval_data(self.data, self.forget_split)["retain"]

    def policy(self, split: str = "policy_test") -> list[dict]:
        from obliviate.suites.refusal import policy_rows, subsample

        return subsample(policy_rows(self.data, split), self.limit)


@dataclass
class Attack:
    """Base: `suites` says where the attack applies; `run` returns flat figures for one model."""

    suites: ClassVar[tuple[str, ...]] = ("world",)
    description: ClassVar[str] = ""

    def run(self, ctx: AuditContext, model, tok) -> dict[str, float | None]:
        raise NotImplementedError

    @classmethod
    def from_options(cls, options: dict) -> "Attack":
        known = {f.name for f in fields(cls)}
        kwargs = {}
        for key, value in options.items():
            if key not in known:
                raise UsageError(f"attack {cls.__name__} has no option {key!r} (options: {', '.join(known)})")
            kind = type(getattr(cls, key))
            try:
                kwargs[key] = kind(value)
            except (TypeError, ValueError):
                raise UsageError(f"attack option {key}={value!r}: expected {kind.__name__}") from None
        return cls(**kwargs)


def rouge_on(model, tok, items, max_new_tokens: int = 48) -> tuple[float, list[str]]:
    """Mean ROUGE-L recall of greedy answers to `items` against their answers, and the answers."""
    from obliviate.generation import generate
    from obliviate.metrics.tofu import rouge_l_recall
    from obliviate.models.encode import prompt_ids

    if not items:
        return 0.0, []
    outs = generate(model, tok, [prompt_ids(tok, it.question) for it in items], max_new_tokens=max_new_tokens)
    return sum(rouge_l_recall(it.answer, o) for it, o in zip(items, outs)) / len(items), outs


def recall_figures(items, outs: list[str], prefix: str) -> dict[str, float]:
    """ROUGE-L recall of the answers against the full gold answers and against the facts' values alone.

    The full-answer figure is inflated by the answer template ("X was born in ..."), which any model that
    knows the template scores on; the value figures (ROUGE-L recall of the gold value, and exact value hits)
    measure the fact itself. Items without a `value` use the full answer for both."""
    from obliviate.metrics.tofu import rouge_l_recall

    n = max(1, len(items))
    vals = [it.value or it.answer for it in items]
    return {f"{prefix}_rouge": sum(rouge_l_recall(it.answer, o) for it, o in zip(items, outs)) / n,
            f"{prefix}_value_rouge": sum(rouge_l_recall(v, o) for v, o in zip(vals, outs)) / n,
            f"{prefix}_value_acc": sum(v.lower() in o.lower() for v, o in zip(vals, outs)) / n}


def refusal_rate(model, tok, prompts: list[list[int]], max_new_tokens: int = 48, judges=("gcg", "jbb")
                 ) -> tuple[float, list[str]]:
    """Share of greedy continuations of token-id prompts judged a refusal (keyword judges), and the replies."""
    from obliviate.generation import generate
    from obliviate.judges.refusal import judge

    if not prompts:
        return 0.0, []
    outs = generate(model, tok, prompts, max_new_tokens=max_new_tokens)
    return sum(judge("", o, list(judges))[0] == "refusal" for o in outs) / len(outs), outs


def load_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


load_all()
