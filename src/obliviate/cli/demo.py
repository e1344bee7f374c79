"""`obliviate demo`: the whole pipeline on a built-in world (unlearning or refusal)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from obliviate.cli.common import STARTED, set_threads
from obliviate.errors import UsageError


def demo(out: Path = typer.Option(Path("runs/demo"), help="output directory"),
         seed: int = typer.Option(0),
         methods: Optional[str] = typer.Option(None, help="comma-separated methods, or 'all' (default: the "
                                               "six TOFU/NPO baselines, which fit the 2-minute budget)"),
         suite: str = typer.Option("world", help="world (unlearning) or refusal (refusal methods)"),
         threads: Optional[int] = typer.Option(None)):
    """World -> target + oracle -> methods on forget10 -> evaluation, table and report.

    With --suite refusal: world -> unaligned target -> every refusal method -> refusal at depth, over-refusal,
    utility, a fine-tuning attack -> results.json and refusal_depth.png."""
    set_threads(threads)
    meths = methods.split(",") if methods else None
    if suite == "refusal":
        from obliviate.suites.refusal_demo import run_refusal_demo

        run_refusal_demo(out, seed=seed, methods=meths, started=STARTED)
        return
    if suite != "world":
        raise UsageError(f"unknown demo suite {suite!r}; use 'world' or 'refusal'")
    from obliviate.demo import run_demo

    run_demo(out, seed=seed, methods=meths, started=STARTED)
