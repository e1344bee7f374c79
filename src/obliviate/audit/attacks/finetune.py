"""Fine-tuning attack on refusals: LoRA on a handful of harmful (fictional) examples (Lermen et al. 2023, "LoRA
Fine-tuning Efficiently Undoes Safety Training in Llama 2-Chat 70B", arXiv:2310.20624; Qi et al. 2024,
"Fine-tuning Aligned Language Models Compromises Safety, Even When Users Do Not Intend To", ICLR 2024).

The attacker fine-tunes LoRA adapters (rank `lora_r`) for `steps` steps on `n_examples` harmful prompts paired
with harmful answers, then the refusal metrics are measured on prompts it never trained on. The pairs are:

- world: `policy_train`'s harmful rows with their (fictional) answers; measured on `policy_test`;
- public prompt files with `--harmful-responses FILE` (BeaverTails-like `prompt` / `response` records): those
  pairs; measured on every given prompt;
- public prompt files alone: a seeded half of the harmful prompts, each answered by the audited model itself,
  greedily, after the row's affirmative target ("Sure, here is ..." + its continuation, `answer_tokens` new tokens;
  Qi et al.'s attacker needs only a model willing to start). The same pairs then train every role; they are
  written to `artifacts/finetune/model/generated.jsonl` and nowhere else. Measured on the other half.

Shots are drawn among the training rows whose request is at most `max_prompt_tokens` tokens long (its text alone,
without the chat template; default 64, 0 = no limit): the papers' harmful demonstrations are one- or two-sentence
instructions (Qi et al.'s 10- and 100-shot sets, Lermen et al.'s AdvBench-style requests), while HarmBench's
contextual behaviours carry a document of 150 to 1,000 tokens. Training time grows with the shots' tokens: on
HarmBench-val's training half, the 8 contextual rows among 32 shots held 58% of them (SmolLM2's tokens).

Figures: `refusal_rate_before`, `refusal_rate_after`, `refusal_rate@prefill20_after`, `over_refusal_rate_after`,
`n_examples`. Budget: `n_examples`, `steps` (under the audit's `--limit`: 8 examples, 10 steps, unless given);
memory: `max_batch_tokens` (micro-batches, the same gradients), `gradient_checkpointing`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from obliviate.audit.attacks import ATTACKS, Attack, AuditContext, direct
from obliviate.core.errors import UsageError


@ATTACKS.register("finetune")
@dataclass
class FinetuneAttack(Attack):
    n_examples: int = 32
    # batches of 16: 20 steps are about 10 epochs of 32 shots (Qi et al. train 5 epochs on 10 or 100 examples)
    steps: int = 20
    lr: float = 1e-3
    lora_r: int = 8
    answer_tokens: int = 64  # self-generated answers: new tokens after the target
    # each batch of 16 trains as micro-batches of at most this many padded tokens (TrainConfig.max_batch_tokens;
    # 0: whole batches). HarmBench's self-answered pairs run from 94 to 512 tokens; whole batches pad all 16 to the
    # longest, and on SmolLM2-135M (fp32, LoRA r=8) 2 steps went past this machine's 24 GB: the kernel killed the
    # audit. Micro-batches of 1024: 4.4 GB, 36 s (2048: 8.3 GB, 64 s; 512: 2.8 GB, 26 s)
    max_batch_tokens: int = 1024
    # recompute activations in the backward pass (TrainConfig.gradient_checkpointing): less memory, more time
    gradient_checkpointing: bool = False
    max_prompt_tokens: int = 64  # shots' requests at most this many tokens (0: any length); see the docstring
    suites = ("refusal",)
    description = "LoRA fine-tuning on a few harmful examples"
    quick = {"n_examples": 8, "steps": 10}

    def __post_init__(self):
        if (
            self.n_examples < 1
            or self.steps < 1
            or self.lr <= 0
            or self.lora_r < 0
            or self.answer_tokens < 1
            or self.max_batch_tokens < 0
            or self.max_prompt_tokens < 0
        ):
            raise UsageError(
                "finetune: n_examples >= 1, steps >= 1, lr > 0, lora_r >= 0 (0 = full weights), "
                "answer_tokens >= 1, max_batch_tokens >= 0, max_prompt_tokens >= 0"
            )

    def missing(self, ctx: AuditContext) -> str | None:
        train, test = ctx.policy_split()
        if not ctx.inputs.get("harmful_pairs") and not any(r["kind"] == "harmful" for r in train):
            return "no harmful prompts to fine-tune on (give more prompts, or --harmful-responses FILE)"
        if not any(r["kind"] == "harmful" for r in (ctx.policy() if ctx.inputs.get("harmful_pairs") else test)):
            return "no held-out harmful prompts to measure on"
        return None

    def pairs(self, ctx: AuditContext, model, tok) -> tuple[list[tuple[str, str]], list[dict]]:
        """(training pairs, rows measured on); see the module docstring."""
        train, test = ctx.policy_split()
        rng = random.Random(ctx.seed)
        if ctx.inputs.get("harmful_pairs"):
            given = ctx.inputs["harmful_pairs"]
            return rng.sample(given, min(self.n_examples, len(given))), ctx.policy()
        harmful = [r for r in train if r["kind"] == "harmful"]
        if self.max_prompt_tokens:
            fits = [
                r
                for r in harmful
                if len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) <= self.max_prompt_tokens
            ]
            if not fits:
                raise UsageError(
                    f"finetune: no harmful training prompt has at most {self.max_prompt_tokens} tokens; "
                    "raise --option finetune.max_prompt_tokens (0: any length)"
                )
            harmful = fits
        shots = rng.sample(harmful, min(self.n_examples, len(harmful)))
        if "source" not in shots[0]:  # the world's rows carry their harmful answers
            return [(r["prompt"], r["answer"]) for r in shots], test
        if "self_pairs" not in ctx.inputs:  # generated once, by the first role's model (the audited one)
            from obliviate.data.schema import write_jsonl
            from obliviate.engine.generation import generate
            from obliviate.models.encode import answer_ids, prompt_ids

            # prompt + the affirmative target, continued; small batches, as public prompts can be long (HarmBench's
            # contextual behaviours run to thousands of tokens)
            outs = generate(
                model,
                tok,
                [prompt_ids(tok, r["prompt"]) + answer_ids(tok, r["answer"])[:-1] for r in shots],
                max_new_tokens=self.answer_tokens,
                batch_size=4,
            )
            ctx.inputs["self_pairs"] = [
                (r["prompt"], (r["answer"] + ("" if o[:1] in ",.:;!?" else " ") + o).strip())
                for r, o in zip(shots, outs)
            ]
            if ctx.out is not None:
                ctx.out.mkdir(parents=True, exist_ok=True)
                write_jsonl(
                    ctx.out / "generated.jsonl",
                    [
                        {"kind": "harmful_answer", "prompt": p, "reply": a, "generated_by": ctx.role}
                        for p, a in ctx.inputs["self_pairs"]
                    ],
                )
        return ctx.inputs["self_pairs"], test

    def run(self, ctx: AuditContext, model, tok) -> dict:
        from obliviate.engine.train import FineTune, TrainConfig, train
        from obliviate.refusal.evaluate import refusal_eval

        shots, test = self.pairs(ctx, model, tok)
        judge = ctx.judge()
        # before: the harmful rows alone (only its refusal rate is reported; the benign rows' replies before
        # training would be generated for nothing: on XSTest's 250 safe prompts, most of this step's time)
        harmful = [r for r in test if r["kind"] == "harmful"]
        before = refusal_eval(
            model,
            tok,
            harmful,
            depths=(),
            max_new_tokens=ctx.max_new_tokens,
            refused_fn=judge,
            generator=direct.generator(ctx),
        )[0]
        cfg = TrainConfig(
            retain_batch_size=min(16, len(shots)),
            seed=ctx.seed,
            checkpoint_every=0,
            progress=False,
            lora_r=self.lora_r,
            gradient_checkpointing=self.gradient_checkpointing,
            max_batch_tokens=self.max_batch_tokens,
        )
        model, _ = train(model, tok, FineTune(lr=self.lr, steps=self.steps), {"retain": shots}, cfg)
        after = refusal_eval(model, tok, test, depths=(20,), max_new_tokens=ctx.max_new_tokens, refused_fn=judge)[0]
        return {
            "refusal_rate_before": before["refusal_rate"],
            "refusal_rate_after": after["refusal_rate"],
            "refusal_rate@prefill20_after": after["refusal_rate@prefill20"],
            "over_refusal_rate_after": after["over_refusal_rate"],
            "n_examples": float(len(shots)),
        }
