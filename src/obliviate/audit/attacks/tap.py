"""TAP: Tree of Attacks with Pruning. PAIR's attacker, grown into a tree: every leaf conversation branches into
several refined prompts, off-topic prompts are pruned before any target query, and only the best-scored leaves
are kept for the next depth (black-box: only the target's generations are used).

Mehrotra, Zampetakis, Kassianik, Nelson, Anderson, Singer and Karbasi 2023, "Tree of Attacks: Jailbreaking
Black-Box LLMs Automatically" (arXiv:2312.02119), Algorithm 1 (branch, prune phase 1, query and assess, prune
phase 2; branching factor b, width w, depth d). Reference code: RICommunity/TAP (`main_TAP.py`: the loop and
`prune`; `evaluators.py`: the on-topic and judge scores; `conversers.py`, `common.py` as PAIR's).

One depth (their `main_TAP.py`):

    branch    every leaf's conversation is copied b times and each copy asks the attacker for a refined prompt
              (unparsable answers are dropped: their `clean_attacks_and_convs`)
    prune 1   prompts judged off-topic are removed; at most w remain
    query     each remaining prompt is sent to the target and its reply judged    (one target query each)
    prune 2   at most w leaves remain, those with the highest scores
    stop when any leaf jailbreaks

Pruning sorts by score with ties in a random (seeded) order and keeps the first w with a score above 0, as their
`prune`. Where we follow the code, not the paper: phase 1 also cuts to w leaves (their `prune` does so in both
phases; the paper's phase 1 only removes off-topic prompts), so a depth never costs more than w queries; when every
prompt is off-topic one is kept at random (their `prune` keeps a fallback rather than ending the tree); histories
keep the last `keep_last_n` exchanges (their `keep_last_n`, 3); the tree starts from `n_streams` roots (theirs: 1).

The on-topic question (phase 1) goes to the attacker model itself, not to a separate evaluator as in the
references (GPT-4): it is asked, greedily, whether the prompt asks for the same thing as the goal, and answers
[[YES]] or [[NO]]; an answer with neither (nor a leading yes / no) counts as on topic, their evaluator's default.
`prune_off_topic=false` skips phase 1 (their "no-evaluator"). The judge (phase 2) is the audit's binary judge
(`attacker.py`); the references' GPT-4 judge scores 1-10, so phase 2 here only separates jailbreaks from refusals.

Budget: depth d, branching b, width w (the paper: 10, 4, 10; the defaults here are 3, 2, 4, scaled down for a
CPU), at most `max_queries` target queries per behaviour (the prompts beyond what is left are not sent);
`behaviours`. Seed: the audit's seed with the behaviour's id (the attacker's sampling and the pruning's ties).

Record (findings.jsonl): as PAIR's, with "depth" (depths run) and "pruned_off_topic" (prompts removed in phase 1).
steps.jsonl: every depth's best score.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, ClassVar

from obliviate.audit.attacks import ATTACKS, AuditContext
from obliviate.audit.attacks.adversarial import Behaviour, Findings
from obliviate.audit.attacks.attacker import SYSTEM, ChatSearch, Node, Search, answered, feedback, first_message


def prune(scores: list[float], width: int, rng: random.Random, keep_one: bool = False) -> list[int]:
    """Indices of the items to keep, best first: at most `width`, each with a score above 0, ties in a random order
    (their `prune`). `keep_one`: when none qualifies, one is kept at random."""
    order = list(range(len(scores)))
    rng.shuffle(order)
    order.sort(key=lambda i: -scores[i])  # a stable sort: equal scores stay in the shuffled order
    kept = [i for i in order[:width] if scores[i] > 0]
    return kept if kept or not keep_one else order[:1]


def tap_search(
    propose: Callable[[list[list[dict]]], list[dict | None]],
    query: Callable[[list[str]], tuple[list[int], list[str]]],
    on_topic: Callable[[list[str]], list[bool]] | None,
    rng: random.Random,
    goal: str,
    target: str,
    *,
    depth: int,
    branching: int,
    width: int,
    n_streams: int,
    max_queries: int,
    keep_last_n: int,
    log: Callable | None = None,
) -> tuple[Search, int]:
    """TAP's loop on one behaviour: (the search, prompts pruned off-topic). `propose` and `query` as in
    `pair_search`; `on_topic(prompts) -> [bool]` (None: no phase 1). Never more than `max_queries` target queries,
    never more than `width` leaves."""
    leaves = [Node([], first_message(goal, target)) for _ in range(n_streams)]
    s, off_topic = Search(), 0
    for d in range(1, depth + 1):
        room = max_queries - s.queries
        if room <= 0:
            break
        s.steps = d
        asked = [leaf.ask() for _ in range(branching) for leaf in leaves]  # their order: branch by branch
        kids = [(turns, a) for turns, a in zip(asked, propose(asked)) if a is not None]
        scores: list[int] = []
        if kids:
            flags = on_topic([a["prompt"] for _, a in kids]) if on_topic else [True] * len(kids)
            off_topic += flags.count(False)
            kids = [kids[i] for i in prune([float(f) for f in flags], width, rng, keep_one=True)][:room]
            scores, replies = query([a["prompt"] for _, a in kids])
            s.add([a for _, a in kids], scores, replies)
            leaves = [
                Node(answered(kids[i][0], kids[i][1], keep_last_n), feedback(replies[i], scores[i], goal, target))
                for i in prune([float(x) for x in scores], width, rng)
            ]
        # a depth whose answers were all unparsable keeps its leaves: they ask again at the next depth
        if log:
            figs = {"best": float(s.score), "queries": s.queries, "sent": len(kids), "leaves": len(leaves)}
            log(d, float(max(scores, default=0)), **figs)
        if s.success:
            break
    return s, off_topic


@ATTACKS.register("tap")
@dataclass
class TAP(ChatSearch):
    depth: int = 3  # d (the paper: 10)
    branching: int = 2  # b: refinements per leaf and depth (the paper: 4)
    width: int = 4  # w: leaves kept after pruning (the paper: 10)
    n_streams: int = 1  # roots of the tree (their n_streams)
    keep_last_n: int = 3  # exchanges each conversation keeps (their keep_last_n)
    prune_off_topic: bool = True  # phase 1, asked of the attacker model

    description = "TAP: a tree of attacker refinements, pruned off-topic and by score (Mehrotra et al.)"
    quick: ClassVar[dict] = {"behaviours": 4, "depth": 2, "width": 2}

    def check(self) -> None:
        self.check_attacker(
            depth=self.depth,
            branching=self.branching,
            width=self.width,
            n_streams=self.n_streams,
            keep_last_n=self.keep_last_n,
        )

    def attack_one(self, ctx: AuditContext, model, tok, b: Behaviour, findings: Findings) -> dict:
        bot = self.attacker(ctx, model, tok, b.id)
        system = SYSTEM.format(goal=b.request, target=b.target)
        s, off_topic = tap_search(
            lambda convs: bot.propose(system, convs),
            self.target(ctx, model, tok, b.request),
            (lambda prompts: bot.on_topic(b.request, prompts)) if self.prune_off_topic else None,
            random.Random(f"{ctx.seed}:{b.id}:prune"),
            b.request,
            b.target,
            depth=self.depth,
            branching=self.branching,
            width=self.width,
            n_streams=self.n_streams,
            max_queries=self.max_queries,
            keep_last_n=self.keep_last_n,
            log=lambda d, obj, **kw: findings.step(b.id, d, obj, parse_failures=bot.failures, **kw),
        )
        return {
            **s.record(b.request),
            "depth": s.steps,
            "pruned_off_topic": off_topic,
            "attacker_parse_failures": bot.failures,
            "attacker_replies": bot.replies,
        }
