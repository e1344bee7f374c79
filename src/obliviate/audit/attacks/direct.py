"""The direct greedy replies that several refusal attacks start from, decoded once per audit and model.

`finetune` (its refusal rate before training), `prefill` (depth 0), `completion` (the chat rate), `tense` (the
original requests) and `refusal_direction` (before its edits) all measure the audited model's greedy replies to the
same prompts. The audit loads the same model afresh for every attack, so those replies are the same each time: they
are decoded once per role and prompt and kept in `AuditContext.direct_replies`, {(role, max_new_tokens, prompt
ids): reply}. On HarmBench-val each set of 80 is about 50 s on SmolLM2-135M here (16 of them carry documents of up
to 1,000 tokens).

Only a freshly loaded model's replies are shared: an attack asks for them before it trains, hooks or edits
anything. Sampled replies (`--samples`, `--temperature`), a model with guards attached and a model served at an
endpoint decode as they did before, every time (`generator` passes them through; `direct_rate` takes a local model,
and the attacks that also run on endpoints call it only where `shareable`).
"""

from __future__ import annotations

from obliviate.audit.attacks import AuditContext
from obliviate.engine.hooks import attached
from obliviate.models.encode import prompt_ids
from obliviate.models.remote import RemoteModel
from obliviate.refusal.evaluate import plain_generate


def shareable(model) -> bool:
    """Whether this model's greedy replies may be shared: a local model without guards."""
    return not isinstance(model, RemoteModel) and not attached(model)


def generator(ctx: AuditContext):
    """A `refusal_eval` generator for the role's model as loaded: greedy replies to prompts without a prefill come
    from `ctx.direct_replies` when known and are kept there when not; everything else is decoded as usual."""

    def gen(model, tok, prompts, prefills=None, max_new_tokens: int = 48, sampling=None):
        prefills = prefills or [[] for _ in prompts]
        if sampling is not None or not shareable(model):
            return plain_generate(model, tok, prompts, prefills, max_new_tokens=max_new_tokens, sampling=sampling)
        memo = ctx.direct_replies
        keys = [None if f else (ctx.role, max_new_tokens, tuple(p)) for p, f in zip(prompts, prefills)]
        todo = [i for i, k in enumerate(keys) if k is None or k not in memo]
        outs = (
            plain_generate(
                model, tok, [prompts[i] for i in todo], [prefills[i] for i in todo], max_new_tokens=max_new_tokens
            )
            if todo
            else []
        )
        fresh = dict(zip(todo, outs))
        for i, o in fresh.items():
            if keys[i] is not None:
                memo[keys[i]] = o
        return [fresh[i] if i in fresh else memo[keys[i]] for i in range(len(prompts))]

    return gen


def direct_rate(ctx: AuditContext, model, tok, texts: list[str]) -> tuple[float, list[str]]:
    """(share of the requests' direct greedy replies that the audit's judge calls a refusal, the replies) of a
    local model: the decode loop on the chat prompts, as `attacks.refusal_rate` runs it, shared where it may be."""
    if not texts:
        return 0.0, []
    outs = generator(ctx)(model, tok, [prompt_ids(tok, t) for t in texts], max_new_tokens=ctx.max_new_tokens)
    return sum(map(bool, ctx.judge()(texts, outs))) / len(outs), outs
