"""`obliviate audit`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from obliviate.cli.common import set_threads
from obliviate.errors import UsageError


def _attack_options(options: list[str]) -> dict[str, dict]:
    """ATTACK.KEY=VALUE -> {attack: {key: value}}."""
    out: dict[str, dict] = {}
    for o in options:
        if "=" not in o or "." not in o.split("=", 1)[0]:
            raise UsageError(f"--option expects ATTACK.KEY=VALUE (e.g. relearn.steps=40), got {o!r}")
        key, value = o.split("=", 1)
        attack, name = key.split(".", 1)
        out.setdefault(attack.strip(), {})[name.strip()] = value.strip()
    return out


def audit(model: str = typer.Argument(..., help="the model to audit (HF directory)"),
          suite: str = typer.Option(..., help="world (unlearning attacks) or refusal (attacks on refusals)"),
          data: Path = typer.Option(..., help="the suite's data directory (a world from `obliviate world`)"),
          out: Path = typer.Option(..., help="writes audit.json, audit.md and artifacts/"),
          oracle: Optional[str] = typer.Option(None, help="model never trained on the forget set (required for "
                                                          "the world suite)"),
          target: Optional[str] = typer.Option(None, help="the model before unlearning / alignment"),
          attacks: Optional[str] = typer.Option(None, help="comma-separated subset (default: every applicable)"),
          option: List[str] = typer.Option([], help="attack option ATTACK.KEY=VALUE (repeatable)"),
          forget_split: str = typer.Option("forget10"),
          limit: Optional[int] = typer.Option(None, help="at most N rows per evaluation set (quick look)"),
          time_budget: Optional[float] = typer.Option(None, help="seconds; attacks not started by then are "
                                                                 "skipped and listed"),
          seed: int = typer.Option(0), threads: Optional[int] = typer.Option(None)):
    """Attack MODEL to tell removed from suppressed knowledge, and real refusals from shallow ones."""
    from obliviate.audit import report, run_audit

    if limit is not None and limit < 1:
        raise UsageError("--limit must be >= 1")
    set_threads(threads)
    doc = run_audit(model, suite, data, out, oracle=oracle, target=target,
                    attacks=[a.strip() for a in attacks.split(",") if a.strip()] if attacks else None,
                    options=_attack_options(option), forget_split=forget_split, seed=seed, limit=limit,
                    time_budget=time_budget)
    typer.echo(report(doc))
    typer.echo(f"wrote {out}/audit.json, audit.md ({doc['wall_seconds']} s)")
