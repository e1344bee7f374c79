"""`obliviate guard fit NAME`: fit an inference-time guard's learned parts and save them as a guard directory."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from obliviate.cli.common import parse_options, set_threads

guard_app = typer.Typer(no_args_is_help=True, help="Inference-time guards: fit them, then pass --guard DIR.")


@guard_app.command("fit")
def fit(
    name: str = typer.Argument(..., help="guard name (`obliviate ls guards`)"),
    model: str = typer.Option(..., help="the model directory the guard will guard"),
    out: Path = typer.Option(..., help="the guard directory to write (guard.json + tensors.safetensors)"),
    data: Optional[Path] = typer.Option(None, help="a world directory, or a TOFU / unlearning data directory"),
    forget: Optional[Path] = typer.Option(None, help="unlearning guards: forget QA file"),
    retain: Optional[Path] = typer.Option(None, help="unlearning guards: retain QA file"),
    forget_split: str = typer.Option("forget10", help="world / TOFU forget split"),
    harmful: List[str] = typer.Option([], help="refusal guards: KIND:FILE prompts to refuse (repeatable)"),
    benign: List[str] = typer.Option([], help="refusal guards: KIND:FILE prompts to answer (repeatable)"),
    option: List[str] = typer.Option([], help="guard option KEY=VALUE (repeatable; `obliviate ls guards`)"),
    seed: int = typer.Option(0),
    threads: Optional[int] = typer.Option(None),
):
    """Fit NAME on the model and data (refusal guards: the world's policy_train, or the train half of public prompt
    files; unlearning guards: forget versus retain items), report held-out figures, and write OUT."""
    from obliviate.audit.guard_fit import fit_guard

    options = parse_options(option)
    set_threads(threads)
    report = fit_guard(
        name,
        model,
        out,
        data=data,
        forget=forget,
        retain=retain,
        forget_split=forget_split,
        harmful=harmful,
        benign=benign,
        options=options,
        seed=seed,
    )
    typer.echo(
        f"{name}: "
        + (", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in report.items()) or "fitted")
    )
    typer.echo(f"wrote {out}")
