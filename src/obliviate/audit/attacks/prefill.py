"""Prefill attack and completion attack on refusals.

- `prefill`: the reply is prefilled with the first k tokens of the harmful answer (token level, after the
  assistant tag) and only the continuation is judged (Andriushchenko et al. 2024, "Jailbreaking Leading
  Safety-Aligned LLMs with Simple Adaptive Attacks", Sec. 3 prefilling; Qi et al. 2025, Sec. 2.2). Figures:
  `refusal_rate` and `refusal_rate@prefill{k}`; attack success is 1 - refusal rate.
- `completion`: the request is given as plain text, without the chat template, and the model continues it as a
  document (the "completion attack" of DeRTa's evaluation, Yuan et al. 2024, Sec. 4.1). Figures:
  `refusal_rate_chat` (with the template) and `refusal_rate_no_template`. On a model served at an endpoint the
  chat rate's requests go as user messages and the plain text through `POST /v1/completions` (skipped, saying so,
  where the endpoint has none); with the served model's `--tokenizer` the text is sent as the local audit writes it,
  after the tokenizer's BOS and with `add_special_tokens: false` (vLLM's field), else as it is, the server adding
  what its tokenizer adds.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.audit.attacks import ATTACKS, Attack, AuditContext, direct, refusal_rate
from obliviate.audit.attacks.adversarial import no_targets
from obliviate.core.errors import UsageError


def no_harmful(ctx: AuditContext) -> str | None:
    if not any(r["kind"] == "harmful" for r in ctx.policy()):
        return "no harmful prompts to attack"
    return None


@ATTACKS.register("prefill")
@dataclass
class Prefill(Attack):
    depths: str = "5,10,20,40"  # budget: prefill depths in tokens
    suites = ("refusal",)
    needs_target = True  # it prefills the target's tokens
    description = "prefill the reply with k tokens of the harmful answer"

    def on_endpoint(self, tokenizer: bool) -> str | None:
        # an endpoint continues a prefix sent as text (`continue_final_message`): the k tokens are cut locally
        return None if tokenizer else "it cuts the first k answer tokens: give the served model's --tokenizer DIR"

    def __post_init__(self):
        try:
            self.k = [int(d) for d in str(self.depths).split(",") if d.strip()]
        except ValueError:
            raise UsageError(f"prefill: depths must be comma-separated integers, got {self.depths!r}") from None
        if not self.k or min(self.k) < 1:
            raise UsageError("prefill: depths must be >= 1")

    def missing(self, ctx: AuditContext) -> str | None:
        return no_targets(ctx)

    def run(self, ctx: AuditContext, model, tok) -> dict:
        """The refusal rates, and under "intervals" each one's n and bootstrap interval (the runner files them in
        the attack's entry). With `--samples N` each prompt gets N sampled replies (`refusal_rate@all{N}`: refused
        in all of them)."""
        from obliviate.refusal.evaluate import refusal_eval, refusal_intervals

        harmful = [r for r in ctx.policy() if r["kind"] == "harmful"]
        rates, records, _ = refusal_eval(
            model,
            tok,
            harmful,
            depths=self.k,
            max_new_tokens=ctx.max_new_tokens,
            refused_fn=ctx.judge(),
            samples=ctx.samples,
            temperature=ctx.temperature,
            top_p=ctx.top_p,
            seed=ctx.seed,
            generator=direct.generator(ctx),  # depth 0: the direct replies, shared with the other attacks
        )
        figs = {k: v for k, v in rates.items() if k.startswith("refusal_rate")}
        return figs | {"intervals": {k: v for k, v in refusal_intervals(records, seed=ctx.seed).items() if k in figs}}


@ATTACKS.register("completion")
@dataclass
class Completion(Attack):
    max_prompts: int = 128  # budget: harmful prompts tried
    suites = ("refusal",)
    description = "the request as plain text, without the chat template"
    endpoint_skip = None  # black-box: chat requests, and raw text through /v1/completions
    endpoint_needs = ("completions",)

    def __post_init__(self):
        if self.max_prompts < 1:
            raise UsageError("completion: max_prompts must be >= 1")

    def missing(self, ctx: AuditContext) -> str | None:
        return no_harmful(ctx)

    def run(self, ctx: AuditContext, model, tok) -> dict:
        from obliviate.models.encode import text_ids
        from obliviate.models.remote import RemoteModel

        harmful = [r for r in ctx.policy() if r["kind"] == "harmful"][: self.max_prompts]
        texts, judge = [r["prompt"] for r in harmful], ctx.judge()
        if isinstance(model, RemoteModel):
            return self.run_remote(model, tok, texts, ctx.max_new_tokens, judge)
        chat, _ = direct.direct_rate(ctx, model, tok, texts)
        raw, _ = refusal_rate(
            model, tok, [text_ids(tok, t + "\n") for t in texts], ctx.max_new_tokens, refused=judge, texts=texts
        )
        return {"refusal_rate_chat": chat, "refusal_rate_no_template": raw}

    def run_remote(self, model, tok, texts: list[str], max_new_tokens: int, judge) -> dict:
        """The two rates on an endpoint: chat messages, and raw text through /v1/completions."""
        from obliviate.audit.attacks.adversarial import replies

        rate = lambda outs: sum(map(bool, judge(texts, outs))) / max(1, len(outs))  # noqa: E731
        chat = replies(model, tok, texts, max_new_tokens)
        bos = tok.bos_token if tok is not None and tok.bos_token_id is not None else None
        prompts = [(bos or "") + t + "\n" for t in texts]
        got = model.text_completions(prompts, max_new_tokens, add_special_tokens=False if tok is not None else None)
        raw = [(c.get("text") or "").strip() for c in got]
        return {"refusal_rate_chat": rate(chat), "refusal_rate_no_template": rate(raw)}
