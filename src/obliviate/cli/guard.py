"""`obliviate guard fit NAME`: fit an inference-time guard's learned parts and save them as a guard directory;
`obliviate guard certify DIR`: erase-and-check's certified accuracy, false positives and time per prompt."""

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


@guard_app.command("certify")
def certify(
    guard: Path = typer.Argument(..., help="an erase_check guard directory (`guard fit erase_check`)"),
    data: Optional[Path] = typer.Option(None, help="a world directory (its held-out policy_test)"),
    harmful: List[str] = typer.Option([], help="KIND:FILE harmful prompts (repeatable; their held-out half)"),
    benign: List[str] = typer.Option([], help="KIND:FILE safe prompts (repeatable; their held-out half)"),
    limit: Optional[int] = typer.Option(None, help="at most this many prompts of each source and kind"),
    option: List[str] = typer.Option([], help="guard option KEY=VALUE to measure under (mode, d, variant, ...)"),
    seed: int = typer.Option(0, help="the seed of the train/held-out split (as given to `guard fit`)"),
    threads: Optional[int] = typer.Option(None),
):
    """Erase-and-check's certified accuracy on harmful prompts (its filter's accuracy on the clean ones), its
    false-positive rate on safe prompts, and seconds and filter calls per prompt."""
    from obliviate.audit.guard_certify import certify_guard

    set_threads(threads)
    report = certify_guard(
        guard, data=data, harmful=harmful, benign=benign, limit=limit, options=parse_options(option), seed=seed
    )
    typer.echo("erase_check: " + ", ".join(f"{k} {v:.4g}" for k, v in report.items()))
