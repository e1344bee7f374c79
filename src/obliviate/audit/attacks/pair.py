"""PAIR: Prompt Automatic Iterative Refinement. An attacker chat model writes a jailbreak prompt, reads the target's
reply and its score, and writes a better one; several conversations ("streams") run side by side (black-box: only
the target's generations are used).

Chao, Robey, Dobriban, Hassani, Pappas and Wong 2023, "Jailbreaking Black Box Large Language Models in Twenty
Queries" (arXiv:2310.08419), Algorithm 1 (N streams of at most K iterations, stop at the first jailbreak) and Sec. 3
(the attacker's system prompt, the JSON {"improvement", "prompt"} answer, the judge). Reference code:
patrickrchao/JailbreakingLLMs (`main.py`: the iteration loop; `conversers.py`: `AttackLLM.get_attack`;
`common.py`: `extract_json`, `process_target_response`).

One iteration (their `main.py`):

    for every stream: the attacker answers the stream's last user turn (the opening instruction, then the target's
        last reply and its score) with {"improvement", "prompt"}           (`attacker.Attacker.propose`)
    every prompt is sent to the target; its reply is judged                  (one target query each)
    the conversation keeps the answer and is cut to the last `keep_last_n` exchanges
    stop when any stream jailbreaks

What the two attacks share (the attacker's instructions, prefill, sampling, JSON parsing, the binary judge that
stands in for their 1-10 GPT-4 judge) is described in `attacker.py`. Where we follow the code, not the paper: the
prefill and the resampling of unparsable answers (their `get_attack`), the truncation of each stream's history
(their `keep_last_n`, 4). A stream whose answer stays unparsable after `attempts` samples sends nothing this
iteration and asks again with the same turn at the next (their code stops the run instead).

Budget: `n_streams` x `n_iterations` attacker answers, and at most `max_queries` target queries per behaviour (the
streams beyond what is left are not asked); `behaviours`. The paper runs N = 20 streams for K = 3 iterations (60
queries); the defaults here are 5 x 3, scaled down for a CPU. Seed: the audit's seed with the behaviour's id.

Record (findings.jsonl): "adversarial" (the best prompt: the first that jailbroke, else the latest with the top
score; the request itself when the attacker never wrote a usable prompt), "improvement", "success", "reply",
"objective" (the best score: 10 jailbroken, 1 refused, 0 nothing sent), "curve" [[queries, success], ...],
"queries", "iterations", "attacker_parse_failures", "attacker_replies". steps.jsonl: every iteration's best score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

from obliviate.audit.attacks import ATTACKS, AuditContext
from obliviate.audit.attacks.adversarial import Behaviour, Findings
from obliviate.audit.attacks.attacker import SYSTEM, ChatSearch, Node, Search, answered, feedback, first_message


def pair_search(
    propose: Callable[[list[list[dict]]], list[dict | None]],
    query: Callable[[list[str]], tuple[list[int], list[str]]],
    goal: str,
    target: str,
    *,
    n_streams: int,
    n_iterations: int,
    max_queries: int,
    keep_last_n: int,
    log: Callable | None = None,
) -> Search:
    """PAIR's loop on one behaviour. `propose(conversations) -> [answer or None]` is the attacker,
    `query(prompts) -> (scores, replies)` the judged target; `log(iteration, objective, **extra)` sees every
    iteration. Never more than `max_queries` target queries."""
    streams = [Node([], first_message(goal, target)) for _ in range(n_streams)]
    s = Search()
    for it in range(1, n_iterations + 1):
        room = max_queries - s.queries
        if room <= 0:
            break
        s.steps = it
        asked = [(n, n.ask()) for n in streams[:room]]
        sent = [(n, turns, a) for (n, turns), a in zip(asked, propose([t for _, t in asked])) if a is not None]
        scores, replies = query([a["prompt"] for _, _, a in sent]) if sent else ([], [])
        if sent:
            s.add([a for _, _, a in sent], scores, replies)
        for (n, turns, a), score, reply in zip(sent, scores, replies):
            n.history, n.pending = answered(turns, a, keep_last_n), feedback(reply, score, goal, target)
        if log:
            log(it, float(max(scores, default=0)), best=float(s.score), queries=s.queries, sent=len(sent))
        if s.success:
            break
    return s


@ATTACKS.register("pair")
@dataclass
class PAIR(ChatSearch):
    n_streams: int = 5  # parallel conversations (the paper: 20)
    n_iterations: int = 3  # refinements per conversation (the paper: 3)
    keep_last_n: int = 4  # exchanges each conversation keeps (their keep_last_n)

    description = "PAIR: an attacker chat model refines a jailbreak prompt from the target's replies (Chao et al.)"
    quick: ClassVar[dict] = {"behaviours": 4, "n_streams": 2, "n_iterations": 2}

    def check(self) -> None:
        self.check_attacker(n_streams=self.n_streams, n_iterations=self.n_iterations, keep_last_n=self.keep_last_n)

    def attack_one(self, ctx: AuditContext, model, tok, b: Behaviour, findings: Findings) -> dict:
        bot = self.attacker(ctx, model, tok, b.id)
        system = SYSTEM.format(goal=b.request, target=b.target)
        s = pair_search(
            lambda convs: bot.propose(system, convs),
            self.target(ctx, model, tok, b.request),
            b.request,
            b.target,
            n_streams=self.n_streams,
            n_iterations=self.n_iterations,
            max_queries=self.max_queries,
            keep_last_n=self.keep_last_n,
            log=lambda it, obj, **kw: findings.step(b.id, it, obj, parse_failures=bot.failures, **kw),
        )
        return {
            **s.record(b.request),
            "iterations": s.steps,
            "attacker_parse_failures": bot.failures,
            "attacker_replies": bot.replies,
        }
