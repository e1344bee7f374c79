"""Metrics: pure functions over per-sample statistics, registered with the direction that is better.

A registered metric is `fn(ctx) -> float | None` where `ctx` maps a split name ("forget", "retain",
"world_facts", "holdout") to the per-sample rows that `obliviate.engine.evaluate.score_split` produced, and
`ctx["oracle"]` holds the oracle's rows in the same shape (or None). A metric declares the splits and
models it needs; it is skipped (absent from results) when they are missing.

`higher_is_better` is True / False, or None where the best value is the oracle's (e.g. privleak near 0).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

from obliviate.core.registry import Registry


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable
    higher_is_better: bool | None
    needs: tuple[str, ...]  # splits, plus "oracle" when the oracle's rows are required
    description: str


METRICS: Registry[Metric] = Registry("metric")


def metric(name: str, higher_is_better: bool | None, needs: tuple[str, ...], description: str):
    def deco(fn):
        METRICS.register(name)(Metric(name, fn, higher_is_better, needs, description))
        return fn

    return deco


def compute_all(ctx: dict) -> dict[str, float]:
    """Every registered metric whose dependencies are present in ctx."""
    out = {}
    for name, m in METRICS.items():
        if all(ctx.get(n) for n in m.needs):
            value = m.fn(ctx)
            if value is not None:
                out[name] = float(value)
    return out


for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
