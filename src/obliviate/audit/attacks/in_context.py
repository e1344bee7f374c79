"""In-context relearning: remind the model of the person before asking the forgotten fact.

Shumailov et al. 2024, "UnUnlearning: Unlearning is not sufficient for content regulation in advanced generative
AI" (arXiv:2407.00106): knowledge removed from the weights can be brought back through the context, so that the
unlearned model M' given a prompt behaves like the original M, M(x) ~ M'(context + x) (their "ununlearning").
Here the context holds `k_facts` *other* facts of the same forgotten person, taken from the forget set (never
the asked fact, nor any fact whose text contains the asked value), written before the question in the user
turn. If the reminder brings the asked value back, the association was suppressed rather than removed; a model
that never learned the person (the oracle) can only guess.

A control puts the same number of facts of a *different* forget person (for the same attributes where it can) in
the context: it shows what context of this length and form does by itself, e.g. that a small model copies values
or templates from it, or that long prompts disturb the target itself. On the demo's tiny models, never trained on
prompts with context, the target's value accuracy falls from 0.98 without context to 0.85 with two facts of the
person (about 0.5 with four) and to 0.35 with two facts of another person.

Figures (see `recall_figures`): `no_context_*`, `context_*` and `control_*` (`_rouge`, `_value_rouge`,
`_value_acc`) on the same forget items, `context_gain_value_acc` = context - no context,
`context_vs_control_value_acc` = context - control (the person's own facts against equally long foreign ones),
and `n_items`.
Budget: `k_facts`, the number of facts in the context.

Black-box: on a model served at an endpoint (`audit openai:URL`) every prompt is sent as one user message, and the
greedy replies are scored as the local ones are.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from obliviate.audit.attacks import ATTACKS, Attack, AuditContext, recall_figures, rouge_on
from obliviate.core.errors import UsageError


def _mentions(text: str, value: str) -> bool:
    return bool(value) and value.lower() in text.lower()


def context_prompts(items: list, k: int, seed: int) -> tuple[list, list[str], list[str]]:
    """(asked items, same-person prompts, other-person prompts) for the items whose person has other facts.

    The facts are the other items' gold answers. Neither context ever contains the asked item's value."""
    by_subject: dict[str, list] = {}
    for it in items:
        if it.subject:
            by_subject.setdefault(it.subject, []).append(it)
    subjects = sorted(by_subject)
    asked, same, other = [], [], []
    for it in items:
        rng = random.Random(f"{seed}:{it.id or it.question}")
        own = [o for o in by_subject.get(it.subject, []) if o is not it and not _mentions(o.answer, it.value)]
        others = [s for s in subjects if s != it.subject]
        if not own or not others:
            continue
        facts = rng.sample(own, min(k, len(own)))
        pool = [o for o in by_subject[rng.choice(others)] if not _mentions(o.answer, it.value)]
        attrs = {f.attribute for f in facts}
        pool.sort(key=lambda o: (o.attribute not in attrs, rng.random()))  # same attributes first, if any
        control = pool[: len(facts)]
        asked.append(it)
        same.append(" ".join([*(f.answer for f in facts), it.question]))
        other.append(" ".join([*(f.answer for f in control), it.question]))
    return asked, same, other


@ATTACKS.register("in_context")
@dataclass
class InContext(Attack):
    k_facts: int = 2
    description = "other facts of the forgotten person in the prompt (UnUnlearning), with a control"
    endpoint_skip = None  # black-box: questions with or without context, sent as user messages

    def __post_init__(self):
        if self.k_facts < 1:
            raise UsageError("in_context: k_facts must be >= 1")

    def missing(self, ctx: AuditContext) -> str | None:
        if not context_prompts(ctx.forget_items(), self.k_facts, ctx.seed)[0]:
            return (
                "no forget item has another fact of the same person to put in the context (needs `subject`, "
                "with two or more forget people)"
            )
        return None

    def run(self, ctx: AuditContext, model, tok) -> dict:
        from obliviate.audit.attacks.adversarial import replies
        from obliviate.engine.generation import generate
        from obliviate.models.encode import prompt_ids
        from obliviate.models.remote import RemoteModel

        asked, same, other = context_prompts(ctx.forget_items(), self.k_facts, ctx.seed)
        asked, same, other = asked[: ctx.limit], same[: ctx.limit], other[: ctx.limit]
        if not asked:
            raise UsageError("in_context: no forget item has another fact of the same person (needs `subject`)")
        if isinstance(model, RemoteModel):  # an endpoint: the questions as user messages
            answer = lambda prompts: replies(model, tok, prompts, ctx.max_new_tokens)  # noqa: E731
            outs = answer([it.question for it in asked])
        else:
            answer = lambda prompts: generate(  # noqa: E731
                model, tok, [prompt_ids(tok, p) for p in prompts], max_new_tokens=ctx.max_new_tokens
            )
            _, outs = rouge_on(model, tok, asked, ctx.max_new_tokens)
        out = recall_figures(asked, outs, "no_context")
        for label, prompts in (("context", same), ("control", other)):
            out.update(recall_figures(asked, answer(prompts), label))
        out["context_gain_value_acc"] = out["context_value_acc"] - out["no_context_value_acc"]
        out["context_vs_control_value_acc"] = out["context_value_acc"] - out["control_value_acc"]
        out["n_items"] = float(len(asked))
        return out
