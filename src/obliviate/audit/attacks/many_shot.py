"""Many-shot jailbreaking: k faux exchanges in which the assistant complies, then the harmful request.

Anil et al. 2024, "Many-shot Jailbreaking" (Anthropic; NeurIPS 2024): a long context of k user questions, each
followed by a compliant assistant answer, makes the model answer the final harmful question; the attack's
effectiveness grows with k as a power law (their Fig. 1-3: ASR and the NLL of harmful answers against the number
of shots, k up to 256). Their shots are written by a helpful-only model, and sampled at random per target
question. No code was released with the paper; PyRIT's `ManyShotJailbreakAttack`
(pyrit/executor/attack/single_turn/many_shot_jailbreak.py) is the reference implementation we read: it writes the
faux dialogue as text inside one user message (`form=inline` here).

By default (`form=turns`) the shots are real turns of the tokenizer's chat template ([user q1, assistant a1, ...,
user request] through `models.encode.conversation_ids`), which is how a chat model sees a conversation and what
the paper's dialogue format amounts to for an open model; under a plain template (a model without a chat template,
`--no-chat-template`) each exchange is that template's text (the refusal suite's raw format: the question, a newline
and the answer) with a blank line between them.

Shots, first that applies: `shots_file` (JSONL {"question", "answer"}); `shot_model` (a model directory, e.g. the
model before alignment: it answers harmful prompts of the data that are not the attacked behaviours, and its
answers that the audit's judge does not call a refusal become shots; written to `shots.jsonl`); the audit's
`--harmful-responses` pairs; a world's `policy_train` harmful rows with their (fictional) answers. Public prompt
sets carry no answers: without a file or a model the attack is skipped and says so. A shot whose question is the
attacked request is never used. Every answer is cut to `shot_tokens` tokens (the paper uses whole answers; the cut
keeps more shots inside a small model's context).

Budget: `shots`, the numbers of shots tried ("1,2,4,8,16,32"); for each behaviour max(shots) shots are sampled
with a seeded RNG (ctx.seed and the behaviour's id) and the k-shot prompt uses the first k of them, so the prompts
are nested. A k whose prompt and reply (`--max-new-tokens`) exceed the model's context (`max_position_embeddings`)
is not tried, nor any larger k: records say which k fit (`shots_fit`).

Figures: `asr` (broken at some k), `direct_asr` (no shots), `asr_at_{k}_shots` (broken with exactly k shots, over
the behaviours where k fit: the paper's curve), `asr@shot{k}` (broken with at most k shots: non-decreasing),
`shots_fit` (the largest k that fit for every behaviour); findings hold the conversation that broke each behaviour
(`messages`; `adversarial` is the same written as text), replayed as a conversation.

On a model served at an endpoint (`audit openai:URL`) the conversations are sent as chat messages. The answers are
cut to `shot_tokens` tokens with the served model's `--tokenizer`; without it they are sent whole, only the number
of shots counts, and the records and the figure `shots_cut` (0) say so. The endpoint's context length is not known
beforehand: a k whose request the endpoint refuses with 400 (the context exceeded) is not tried, nor any larger k,
as locally.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from obliviate.audit.attacks import ATTACKS, AuditContext
from obliviate.audit.attacks.adversarial import (
    Behaviour,
    Findings,
    SearchAttack,
    check_budget,
    harmful_behaviours,
    replies,
)
from obliviate.core.errors import UsageError
from obliviate.models.remote import RemoteError, RemoteModel

FORMS = ("turns", "inline")


def parse_shots(text: str) -> list[int]:
    """Parse "1,2,4" into [1, 2, 4] (sorted, unique); anything but positive integers is a UsageError."""
    out = set()
    for part in str(text).split(","):
        try:
            k = int(part.strip())
        except ValueError:
            raise UsageError(f"many_shot: shots must be comma-separated integers >= 1, got {text!r}") from None
        check_budget("many_shot", shots=k)
        out.add(k)
    return sorted(out)


def read_shots(path: str | Path) -> list[tuple[str, str]]:
    """JSONL {"question", "answer"} -> (question, answer) pairs; a bad line is a UsageError naming it."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"many_shot: shots file not found: {p}")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise UsageError(f"{p}:{n}: not a JSON line") from None
        if not isinstance(rec, dict) or any(
            not isinstance(rec.get(f), str) or not rec[f].strip() for f in ("question", "answer")
        ):
            raise UsageError(f"{p}:{n}: expected an object with non-empty string fields question, answer")
        out.append((rec["question"], rec["answer"]))
    if not out:
        raise UsageError(f"{p}: no shots")
    return out


def shot_messages(shots: list[tuple[str, str]], request: str, form: str = "turns") -> list[dict]:
    """The conversation of k shots and the request: turns, or (`inline`) one user message holding the dialogue."""
    if form == "inline":
        dialogue = "".join(f"User: {q}\nAssistant: {a}\n\n" for q, a in shots)
        return [{"role": "user", "content": f"{dialogue}User: {request}\nAssistant:"}]
    msgs = [m for q, a in shots for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    return msgs + [{"role": "user", "content": request}]


def as_text(messages: list[dict]) -> str:
    """A conversation written as one text (what a finding's `adversarial` holds)."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages) + "\n\nAssistant:"


def context_limit(model) -> int | None:
    """The model's context length in tokens (its config's position embeddings), None when it does not say."""
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


@ATTACKS.register("many_shot")
@dataclass
class ManyShot(SearchAttack):
    shots: str = "1,2,4,8,16,32"  # budget: the numbers of shots tried
    shots_file: str = ""  # JSONL {"question", "answer"}: the shots
    shot_model: str = ""  # a model directory that writes the shots (an unaligned model)
    shot_tokens: int = 64  # each shot's answer cut to this many tokens (self-generated answers are this long)
    form: str = "turns"  # turns: chat turns; inline: the dialogue as text in one user message

    budget_name = "shot"
    needs_target = False
    adaptive = True
    description = "many-shot jailbreaking: k faux compliant exchanges before the request (Anil et al. 2024)"
    endpoint_skip = None  # black-box: the conversations go through `adversarial.replies`
    quick = {"shots": "1,2,4,8"}

    def check(self) -> None:
        parse_shots(self.shots)
        check_budget("many_shot", shot_tokens=self.shot_tokens)
        if self.form not in FORMS:
            raise UsageError(f"many_shot: form must be one of {', '.join(FORMS)}, got {self.form!r}")
        if self.shots_file and self.shot_model:
            raise UsageError("many_shot: give shots_file or shot_model, not both")
        if self.shots_file:
            read_shots(self.shots_file)
        if self.shot_model and not (Path(self.shot_model) / "config.json").is_file():
            raise UsageError(f"many_shot: shot_model is not a model directory (no config.json): {self.shot_model}")

    def missing(self, ctx: AuditContext) -> str | None:
        why = super().missing(ctx)
        if why or self.replay or self.shots_file or self.shot_model or ctx.inputs.get("harmful_pairs"):
            return why
        if not _world_pairs(ctx):
            return (
                "no shots: the prompts carry no compliant answers to show; give many_shot.shots_file=FILE "
                "(JSONL question/answer), many_shot.shot_model=DIR (an unaligned model answers other prompts) "
                "or --harmful-responses FILE"
            )
        return None

    def pool(self, ctx: AuditContext) -> list[tuple[str, str]]:
        """Every (question, answer) shot available, before the attacked requests are taken out."""
        if self.shots_file:
            return read_shots(self.shots_file)
        if self.shot_model:
            key = f"many_shot_pool:{self.shot_model}:{self.shot_tokens}"
            if key not in ctx.inputs:  # written once, by the first role's run
                ctx.inputs[key] = self._generate_pool(ctx)
            return ctx.inputs[key]
        return list(ctx.inputs.get("harmful_pairs") or []) or _world_pairs(ctx)

    def _generate_pool(self, ctx: AuditContext) -> list[tuple[str, str]]:
        from obliviate.engine.generation import generate
        from obliviate.models.encode import prompt_ids
        from obliviate.models.load import load_model

        attacked = {b.request for b in harmful_behaviours(ctx, self.behaviours)}
        rows = (ctx.policy_split()[0] or []) + (ctx.inputs.get("policy_eval") or ctx.policy())
        asked = list(dict.fromkeys(r["prompt"] for r in rows if r.get("kind") == "harmful"))
        asked = [q for q in asked if q not in attacked]
        random.Random(f"many_shot:{ctx.seed}").shuffle(asked)
        asked = asked[: 2 * max(parse_shots(self.shots))]
        if not asked:
            raise UsageError("many_shot: no harmful prompts besides the attacked ones for shot_model to answer")
        net, tok = load_model(self.shot_model, require_chat_template=False)
        outs = generate(net, tok, [prompt_ids(tok, q) for q in asked], max_new_tokens=self.shot_tokens, batch_size=8)
        del net
        refused = ctx.judge()(asked, outs)
        pool = [(q, o.strip()) for q, o, r in zip(asked, outs, refused) if not r and o.strip()]
        if ctx.out is not None:
            Path(ctx.out).mkdir(parents=True, exist_ok=True)
            with open(Path(ctx.out) / "shots.jsonl", "w", encoding="utf-8") as f:
                for q, a in pool:
                    f.write(json.dumps({"question": q, "answer": a}) + "\n")
        if ctx.progress:
            ctx.progress(f"many_shot: {self.shot_model} complied with {len(pool)} of {len(asked)} prompts (the shots)")
        return pool

    def attack_one(self, ctx: AuditContext, model, tok, b: Behaviour, findings: Findings) -> dict:
        from obliviate.engine.generation import generate
        from obliviate.models.encode import conversation_ids

        ks = parse_shots(self.shots)
        pool = [(q, a) for q, a in self.pool(ctx) if q.strip() != b.request.strip()]
        picked = random.Random(f"many_shot:{ctx.seed}:{b.id}").sample(pool, min(ks[-1], len(pool)))
        cut = tok is not None  # an endpoint without --tokenizer: the answers go whole
        picked = [(q, _cut(tok, a, self.shot_tokens) if cut else a) for q, a in picked]
        remote, limit = isinstance(model, RemoteModel), context_limit(model)
        tried, note = [], "" if cut else "shots not cut to shot_tokens: no --tokenizer"  # (k, messages, ids)
        for k in [0, *ks]:
            if k > len(picked):
                note = "; ".join(filter(None, (note, f"only {len(picked)} shots available")))
                break
            msgs = shot_messages(picked[:k], b.request, self.form if k else "turns")
            ids = conversation_ids(tok, msgs) if cut else None
            if k and limit and len(ids) + ctx.max_new_tokens > limit:
                note = f"{k} shots need {len(ids)} + {ctx.max_new_tokens} tokens > the context of {limit}"
                break
            tried.append((k, msgs, ids))
        if remote:
            outs, tried, note = _remote_replies(ctx, model, tok, tried, note)
        else:
            outs = generate(model, tok, [ids for _, _, ids in tried], max_new_tokens=ctx.max_new_tokens)
        ok = [not bool(r) for r in ctx.judge()([b.request] * len(outs), outs)]
        for (k, _, ids), hit in zip(tried[1:], ok[1:]):
            findings.step(b.id, k, float(hit), prompt_tokens=len(ids) if ids is not None else None)
        if note and ctx.progress:
            ctx.progress(f"many_shot: {b.id}: {note}; tried up to {tried[-1][0]} shots")
        hits = [i for i in range(1, len(tried)) if ok[i]]
        best = hits[0] if hits else len(tried) - 1  # the fewest shots that broke it, else the most tried
        return {
            "adversarial": as_text(tried[best][1]),
            "messages": tried[best][1],
            "shots": tried[best][0],
            "success": bool(hits),
            "reply": outs[best],
            "objective": float(tried[best][0]) if hits else 0.0,  # the fewest shots that broke it (0: none)
            "curve": [[k, hit] for (k, _, _), hit in zip(tried[1:], ok[1:])],
            "queries": len(tried),
            "direct_success": ok[0],
            "direct_reply": outs[0],
            "shots_fit": tried[-1][0],
            "shots_cut": cut,
            "note": note,
        }

    def figures(self, records: list[dict]) -> dict:
        out = super().figures(records)
        n = max(1, len(records))
        out["direct_asr"] = sum(bool(r.get("direct_success")) for r in records) / n
        for k in parse_shots(self.shots):
            at = [bool(hit) for r in records for kk, hit in r.get("curve", []) if kk == k]
            out[f"asr_at_{k}_shots"] = sum(at) / len(at) if at else None
        out["shots_fit"] = float(min((r.get("shots_fit", 0) for r in records), default=0))
        out["shots_cut"] = float(all(r.get("shots_cut", True) for r in records))  # 0: answers sent whole
        return out


def _remote_replies(ctx: AuditContext, model, tok, tried: list, note: str) -> tuple[list[str], list, str]:
    """An endpoint's replies to the conversations `tried` (k in increasing order): where it refuses one with 400
    (its context exceeded), that k and the larger ones are dropped and the note says why."""
    try:
        return replies(model, tok, [m for _, m, _ in tried], ctx.max_new_tokens), tried, note
    except RemoteError as e:
        first = next(i for i in range(len(tried)) if i not in e.done)
        if e.status != 400 or first == 0:
            raise
        why = f"{tried[first][0]} shots: the endpoint refused the request ({e})"
        outs = [e.done[i].strip() for i in range(first)]
        return outs, tried[:first], "; ".join(filter(None, (note, why)))


def _world_pairs(ctx: AuditContext) -> list[tuple[str, str]]:
    """A world's training policy rows that are harmful, with their (fictional) answers; public rows (which carry a
    `source` and only an affirmative target as their answer) give none."""
    train = ctx.policy_split()[0] or []
    return [
        (r["prompt"], r["answer"])
        for r in train
        if r.get("kind") == "harmful" and "source" not in r and (r.get("answer") or "").strip()
    ]


def _cut(tok, text: str, n: int) -> str:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= n else tok.decode(ids[:n], skip_special_tokens=True).strip()
