"""Refusal tokens (Jain et al. 2024, "Refusal Tokens: A Simple Way to Calibrate Refusals in Large Language
Models", arXiv:2412.06748).

Training: every response starts with a control token, `[respond]` before a helpful answer and `[refuse]` before a
refusal; with `per_category=True` the refusal token names the category (`[refuse:moonvault]`, ...), as in the
paper's category-specific tokens. The tokens are added to the tokenizer as special tokens (so decoded replies
never show them) and the embedding matrix is resized. Loss: the token-mean NLL of each part, tokens included.

Inference (Sec. 3 of the paper, "thresholding"): at the first response position, p_refuse is the softmax
probability (logits / temperature) of the refusal tokens, summed over categories. If p_refuse > tau the most
likely refusal token is emitted, else `[respond]`, and greedy decoding continues from there. Sweeping tau trades
refusal rate against over-refusal rate at inference time, without retraining (`obliviate calibrate`).

Under a prefill attack the decision token is taken first, on the prompt alone, and the prefill follows it: the
decision is a step of the serving system, which the attacker's prefill does not replace.

**Our addition, `swap_share`** (default 0.25; 0 is the paper's recipe): that share of harmful examples is also
trained as `[respond]` + the harmful answer, and as many benign examples as `[refuse:<category>]` + a refusal of
their category. Without it the control token is perfectly predictable from the prompt, so a tiny model learns the
continuation from the prompt alone and ignores the token: measured on the built-in world with `swap_share=0`,
forcing `[respond]` on harmful prompts still gave 39% refusals, so no tau could bring refusal below 39%. With the
swapped examples the token decides the continuation and tau sweeps the whole range (README, `calibrate`). The
harmful answers are the world's fictional ones, which the unaligned target already knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from obliviate.core.errors import UsageError
from obliviate.engine.generation import generate, left_pad
from obliviate.models.control_tokens import REFUSE, RESPOND, control_ids
from obliviate.models.encode import IGNORE, answer_ids, last_logits_only, prompt_ids
from obliviate.refusal.methods import REFUSAL_METHODS, RefusalData, RefusalMethod


def refusal_token_names(categories: list[str], per_category: bool) -> list[str]:
    return [f"[refuse:{c}]" for c in sorted(set(categories))] if per_category else [REFUSE]


def _with_token(tokenizer, question: str, token_id: int, answer: str) -> tuple[list[int], list[int]]:
    p, a = prompt_ids(tokenizer, question), [token_id] + answer_ids(tokenizer, answer)
    return p + a, [IGNORE] * len(p) + a


@REFUSAL_METHODS.register("refusal_tokens")
@dataclass
class RefusalTokens(RefusalMethod):
    per_category: bool = True
    swap_share: float = 0.25
    needs: ClassVar[tuple[str, ...]] = ("refusal", "benign", "retain")

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.swap_share <= 1:
            raise UsageError(f"refusal_tokens: swap_share must be in [0, 1], got {self.swap_share}")

    def prepare(self, model, tokenizer, data: RefusalData):
        names = [RESPOND] + refusal_token_names([r.get("category", "") for r in data.harmful], self.per_category)
        tokenizer.add_tokens(names, special_tokens=True)  # special: decoded replies never show them
        model.resize_token_embeddings(len(tokenizer))
        return model, tokenizer

    def parts(self, data: RefusalData, tokenizer, seed: int = 0, model=None) -> dict[str, list]:
        vocab = tokenizer.get_vocab()
        respond = vocab[RESPOND]

        def refuse_id(row):
            return vocab[f"[refuse:{row['category']}]" if self.per_category else REFUSE]

        import random

        rng = random.Random(seed)
        refusal = [_with_token(tokenizer, r["prompt"], refuse_id(r), r["refusal"]) for r in data.harmful]
        benign = [_with_token(tokenizer, r["prompt"], respond, r["answer"]) for r in data.benign]
        n = round(self.swap_share * len(data.harmful))
        if n:  # the control token, not the prompt, decides the continuation (see the module docstring)
            refusals = {}
            for r in data.harmful:
                refusals.setdefault(r.get("category", ""), []).append(r)
            refusal += [_with_token(tokenizer, r["prompt"], respond, r["answer"]) for r in rng.sample(data.harmful, n)]
            for b in rng.sample(data.benign, min(n, len(data.benign))):
                h = rng.choice(refusals.get(b.get("category", ""), data.harmful))
                benign.append(_with_token(tokenizer, b["prompt"], refuse_id(h), h["refusal"]))
        return {
            "refusal": refusal,
            "benign": benign,
            "retain": [_with_token(tokenizer, it.question, respond, it.answer) for it in data.people],
        }


@torch.no_grad()
def refuse_probability(
    model, tokenizer, prompts: list[list[int]], temperature: float = 1.0, batch_size: int = 64
) -> torch.Tensor:
    """p_refuse [N]: softmax(logits / temperature) mass on the refusal tokens at the first response position."""
    respond, refuse = control_ids(tokenizer)
    if respond is None or not refuse:
        raise UsageError("this model has no refusal tokens; train one with `obliviate align refusal_tokens`")
    if temperature <= 0:
        raise UsageError(f"temperature must be > 0, got {temperature}")
    model.eval()
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[s : s + batch_size], tokenizer.pad_token_id, device)
        logits = model(input_ids=ids, attention_mask=mask, **last_logits_only(model)).logits[:, -1].float()
        out.append(torch.softmax(logits / temperature, -1)[:, refuse].sum(-1).cpu())
    return torch.cat(out)


class ThresholdGenerator:
    """A `generate` wrapper: decide [refuse]/[respond] by p_refuse > tau, then decode greedily after any prefill."""

    def __init__(self, tau: float = 0.5, temperature: float = 1.0):
        if not 0 <= tau <= 1:
            raise UsageError(f"tau must be in [0, 1], got {tau}")
        self.tau, self.temperature = tau, temperature
        self._cache: dict = {}

    def decisions(self, model, tokenizer, prompts: list[list[int]]) -> list[int]:
        respond, refuse = control_ids(tokenizer)
        probs = refuse_probability(model, tokenizer, prompts, self.temperature)
        out = []
        for p, pr in zip(prompts, probs.tolist()):
            if pr > self.tau:  # the most likely refusal token (its category)
                key = tuple(p)
                if key not in self._cache:
                    self._cache[key] = self._best_refusal(model, tokenizer, p, refuse)
                out.append(self._cache[key])
            else:
                out.append(respond)
        return out

    @torch.no_grad()
    def _best_refusal(self, model, tokenizer, prompt, refuse) -> int:
        device = next(model.parameters()).device
        logits = model(input_ids=torch.tensor([prompt], device=device), **last_logits_only(model)).logits[0, -1]
        return refuse[int(logits[refuse].argmax())]

    def __call__(
        self,
        model,
        tokenizer,
        prompts: list[list[int]],
        prefills: list[list[int]] | None = None,
        max_new_tokens: int = 48,
        sampling=None,
    ) -> list[str]:
        """The threshold's control token, then the reply: greedy, or drawn under `sampling` (the decision stays
        p_refuse > tau)."""
        prefills = prefills or [[] for _ in prompts]
        tokens = self.decisions(model, tokenizer, prompts)
        return generate(
            model,
            tokenizer,
            [p + [t] + f for p, t, f in zip(prompts, tokens, prefills)],
            max_new_tokens=max_new_tokens,
            sampling=sampling,
        )
