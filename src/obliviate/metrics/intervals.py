"""Bootstrap intervals for rates and per-item means: every printed rate carries n and a 95% interval.

`rate_interval(outcomes)` takes one list per prompt of one bool per sample (greedy decoding: one-element lists).
The value is the mean over prompts of each prompt's share of true samples (with the same N for every prompt: the
per-sample rate). The interval is a percentile bootstrap over prompts (`scipy.stats.bootstrap`,
`method="percentile"`, seeded with `np.random.default_rng(seed)`): a resampled prompt brings all its N samples
along, so with N > 1 it is the clustered (prompt-level) bootstrap that the samples of one prompt, which are not
independent, call for. Resampling prompts with their samples and taking the mean of the drawn prompts' shares is
the bootstrap of the prompts' shares, which is what is passed to scipy.

`any_of_n(outcomes)`: the same for "at least one of a prompt's N samples is true" (e.g. a harmful prompt answered
in at least one of N tries). `mean_interval(values)`: per-item values (floats, or one list of floats per item).

A sample whose values are all equal (every prompt refused) has no spread to resample: its interval is the value
itself (lo = hi = value), without calling scipy. An empty sample has value, lo and hi None.

garak reports bootstrap intervals over its generations in the same way (`analyze/bootstrap_ci.py`); the choice of
the percentile method over BCa is ours: BCa's acceleration is undefined for many small binary samples (scipy
then returns NaN), and the percentile interval is the one a reader can reproduce from the samples file.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import numpy as np

from obliviate.core.errors import UsageError

LEVEL = 0.95
RESAMPLES = 2000
METHOD = "percentile"


def _interval(per_item: Sequence[float], samples: int, level: float, seed: int, resamples: int) -> dict:
    """{"value", "n", "samples", "lo", "hi", "level", "method"} of the mean of `per_item`."""
    if not 0 < level < 1:
        raise UsageError(f"interval level must be in (0, 1), got {level}")
    if resamples < 1:
        raise UsageError(f"bootstrap resamples must be >= 1, got {resamples}")
    x = np.asarray(per_item, dtype=float)
    out = {"value": None, "n": int(len(x)), "samples": int(samples), "lo": None, "hi": None}
    if len(x):
        value = float(x.mean())
        out |= {"value": value, "lo": value, "hi": value}
        if np.ptp(x) > 0:  # a sample with spread: bootstrap it (an all-equal one has lo = hi = value)
            from scipy.stats import bootstrap

            rng = np.random.default_rng(seed)  # scipy < 1.15 names it random_state
            seeded = {"rng": rng} if "rng" in inspect.signature(bootstrap).parameters else {"random_state": rng}
            res = bootstrap((x,), np.mean, n_resamples=resamples, confidence_level=level, method=METHOD, **seeded)
            out |= {"lo": float(res.confidence_interval.low), "hi": float(res.confidence_interval.high)}
    return out | {"level": level, "method": f"{METHOD} bootstrap over prompts" + (", clustered" if samples > 1 else "")}


def _shape(outcomes: Sequence[Sequence[bool]]) -> int:
    """N, the samples per prompt (the largest, if they differ); every prompt needs at least one."""
    if any(len(o) == 0 for o in outcomes):
        raise UsageError("interval: every prompt needs at least one sample")
    return max((len(o) for o in outcomes), default=1)


def rate_interval(
    outcomes: Sequence[Sequence[bool]], level: float = LEVEL, seed: int = 0, resamples: int = RESAMPLES
) -> dict:
    """The rate of true samples over prompts with its bootstrap interval; `outcomes[i]` holds prompt i's N bools."""
    n = _shape(outcomes)
    return _interval([float(np.mean(o)) for o in outcomes], n, level, seed, resamples)


def any_of_n(
    outcomes: Sequence[Sequence[bool]], level: float = LEVEL, seed: int = 0, resamples: int = RESAMPLES
) -> dict:
    """The share of prompts with at least one true sample, with its bootstrap interval over prompts."""
    n = _shape(outcomes)
    return _interval([float(any(o)) for o in outcomes], n, level, seed, resamples)


def all_of_n(
    outcomes: Sequence[Sequence[bool]], level: float = LEVEL, seed: int = 0, resamples: int = RESAMPLES
) -> dict:
    """The share of prompts whose samples are all true (1 - `any_of_n` of the negations)."""
    n = _shape(outcomes)
    return _interval([float(all(o)) for o in outcomes], n, level, seed, resamples)


def mean_interval(
    values: Sequence[float] | Sequence[Sequence[float]], level: float = LEVEL, seed: int = 0, resamples: int = RESAMPLES
) -> dict:
    """The mean of per-item values with its bootstrap interval over items; an item given as a list of its N samples'
    values counts as their mean (the clustered bootstrap)."""
    nested = [list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v] for v in values]
    n = _shape(nested)
    return _interval([float(np.mean(v)) for v in nested], n, level, seed, resamples)


def format_interval(iv: dict | None, value=None, digits: int = 3) -> str:
    """`0.875 [0.750, 0.975] n=40` (`n=40x5` with 5 samples per prompt); the bare value when there is no interval."""
    if not iv or iv.get("value") is None:
        return "-" if value is None else f"{value:.{digits}f}"
    n = f"n={iv['n']}" + (f"x{iv['samples']}" if iv.get("samples", 1) > 1 else "")
    v = iv["value"] if value is None else value
    return f"{v:.{digits}f} [{iv['lo']:.{digits}f}, {iv['hi']:.{digits}f}] {n}"
