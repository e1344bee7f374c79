"""Sampling for the decode loop: `decode(..., sampling=Sampling(...))` draws each next token instead of taking the
argmax, after the guards have edited the logits, so every guard still applies. Greedy stays the default.

The logits are warped as transformers' `generate(do_sample=True)` warps them, in its order: temperature
(`TemperatureLogitsWarper`), then top-k (`TopKLogitsWarper`: tokens below the k-th largest logit are removed, ties
with it kept), then top-p (`TopPLogitsWarper`, nucleus: the smallest set of most likely tokens whose probability
reaches p, at least one token), then one token is drawn from the softmax of what is left. The draws come from a
`torch.Generator` seeded from `Sampling.seed`: the same prompts, batching and seed give the same replies, and with
one prompt per batch they are those of `model.generate(do_sample=True)` after `torch.manual_seed(seed)` (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from obliviate.core.errors import UsageError


@dataclass(frozen=True)
class Sampling:
    """How the decode loop draws tokens. `top_k=0` and `top_p=1.0` switch those filters off."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self):
        t = self.temperature
        if not (isinstance(t, (int, float)) and t > 0 and math.isfinite(t)):
            raise UsageError(f"sampling: temperature must be > 0 (greedy decoding is the default), got {t}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise UsageError(f"sampling: top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise UsageError(f"sampling: top_k must be an integer >= 0 (0: off), got {self.top_k!r}")

    def generator(self, device=None) -> "torch.Generator":  # noqa: F821
        """A generator on `device` seeded with `seed`: one per decode call, drawn from at every step."""
        import torch

        return torch.Generator(device=device or "cpu").manual_seed(int(self.seed))


def filtered(logits: "torch.Tensor", top_k: int = 0, top_p: float = 1.0) -> "torch.Tensor":  # noqa: F821
    """Logits [B, V] with the tokens outside the top-k, then outside the nucleus of mass top_p, set to -inf."""
    import torch

    out = logits
    if top_k > 0:
        kth = torch.topk(out, min(top_k, out.shape[-1]), dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        ascending, order = torch.sort(out, dim=-1)
        drop = ascending.softmax(-1).cumsum(-1) <= 1 - top_p  # the least likely tokens, up to a mass of 1 - top_p
        drop[..., -1] = False  # the most likely token always stays
        out = out.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return out


def pick(logits: "torch.Tensor", sampling: Sampling, generator: "torch.Generator") -> "torch.Tensor":  # noqa: F821
    """Next token ids [B] drawn from logits [B, V] (float) under `sampling`."""
    import torch

    warped = filtered(logits / sampling.temperature, sampling.top_k, sampling.top_p)
    probs = warped.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sampling_for(
    samples: int = 1, temperature: float | None = None, top_p: float | None = None, seed: int = 0
) -> Sampling | None:
    """The `Sampling` of an evaluation's `--samples N --temperature T --top-p P --seed S`: None (greedy) when N is 1
    and neither T nor P is given; otherwise T (default 1.0) and P (default 1.0). N must be a whole number >= 1."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise UsageError(f"--samples must be a whole number >= 1 (1: one greedy reply), got {samples!r}")
    if samples == 1 and temperature is None and top_p is None:
        return None
    return Sampling(
        temperature=1.0 if temperature is None else temperature, top_p=1.0 if top_p is None else top_p, seed=seed
    )
