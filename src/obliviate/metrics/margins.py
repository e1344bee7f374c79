"""The margin of a language model's answer: the quantity that KLoM compares between unlearned models and oracles,
and that Oracle Matching and Datamodel Matching fit.

Georgiev et al. 2024 ("Attribute-to-Delete: Machine Unlearning via Datamodel Matching", sec. 2) work with a
classifier's correct-class margin, logit_y - logsumexp_{j != y} logit_j, which equals log p_y - log(1 - p_y). An
answer is a sequence of next-token predictions, so we take that margin at every answer token,

    m_t = log p(y_t | x, y_<t) - log(1 - p(y_t | x, y_<t)),

and an item's margin is their mean over the answer tokens. It is our extension to sequences (the paper has no
language-model experiment), defined on the log-probabilities that the evaluation pass already keeps per item
(`token_logps` in `engine.evaluate` rows).
"""

from __future__ import annotations

import math

import numpy as np

# log(1 - p) for p -> 1 is -inf; clamping log p below 0 keeps a margin finite (about 36.7 at the clamp)
_MAX_LOGP = -1e-16


def token_margins(token_logps) -> np.ndarray:
    """Per-token margins log p - log(1 - p) from per-token log-probabilities [T] (numpy)."""
    lp = np.minimum(np.asarray(token_logps, dtype=float), _MAX_LOGP)
    return lp - np.log(-np.expm1(lp))


def item_margin(token_logps) -> float:
    """An answer's margin: the mean of its token margins (NaN for an empty answer)."""
    m = token_margins(token_logps)
    return float(m.mean()) if m.size else math.nan


def token_margins_torch(token_logps):
    """`token_margins` for a torch tensor of log-probabilities (any shape), differentiable."""
    import torch

    lp = token_logps.clamp(max=_MAX_LOGP)
    return lp - torch.log(-torch.expm1(lp))
