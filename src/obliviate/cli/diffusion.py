"""`obliviate erase`: erase a concept from a text-to-image diffusion model (diffusers directory)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from obliviate.cli.common import parse_options, set_threads
from obliviate.core.errors import UsageError


def erase(
    method: str = typer.Argument(..., help="eraser name (`obliviate ls erasers`)"),
    model: Path = typer.Option(..., help="a diffusers text-to-image directory (unet/, text_encoder/, ...)"),
    concept: List[str] = typer.Option(
        ..., help="a concept to erase, in the model's words, e.g. 'star' (repeatable: several in one run)"
    ),
    out: Path = typer.Option(..., help="the edited model's directory"),
    guide: str = typer.Option("", help="what the concept should turn into (default: the empty prompt)"),
    preserve: List[str] = typer.Option([], help="a concept to keep as it was (repeatable)"),
    option: List[str] = typer.Option([], help="eraser option KEY=VALUE (repeatable)"),
    sequential: bool = typer.Option(
        False, help="the concepts are requests applied one after another, scored after each (needs --data)"
    ),
    data: Optional[Path] = typer.Option(
        None, help="an image world: score the erased model on it (UA per concept, IRA, CRA) into OUT/requests.json"
    ),
    classifiers: Optional[Path] = typer.Option(
        None, help="with --data: factor classifiers (default: DATA/classifiers)"
    ),
    limit: int = typer.Option(24, help="with --data: at most N prompts per scored set"),
    ddim_steps: Optional[int] = typer.Option(None, help="with --data: DDIM steps per image [default: 25]"),
    guidance: Optional[float] = typer.Option(None, help="with --data: classifier-free guidance scale [default: 2.0]"),
    threads: Optional[int] = typer.Option(None),
):
    """Erase CONCEPT (or several) with METHOD and save the edited model to OUT (same layout as the input)."""
    from obliviate.diffusion.requests import requests_table
    from obliviate.diffusion.run import erase as run_erase

    options = parse_options(option)
    set_threads(threads)
    if data is None and (classifiers or ddim_steps is not None or guidance is not None):
        raise UsageError("--classifiers, --ddim-steps and --guidance score the erased model: give --data")
    done = run_erase(
        method,
        model,
        concept,
        out,
        guide=guide,
        preserve=preserve,
        options=options,
        sequential=sequential,
        data=data,
        classifiers=classifiers,
        limit=limit,
        log=typer.echo,
        **sampling(ddim_steps, guidance),
    )
    if done.scores:
        typer.echo(requests_table(done.scores, list(concept)))
    typer.echo(f"{method}: erased {', '.join(map(repr, concept))} in {done.seconds:.1f} s; wrote {out}")


def sampling(ddim_steps: Optional[int], guidance: Optional[float]) -> dict:
    """--ddim-steps / --guidance, checked, as keyword arguments of the diffusion eval / audit runners (unset:
    theirs)."""
    from obliviate.diffusion.run import check_sampling

    check_sampling(ddim_steps, guidance)
    return {k: v for k, v in (("ddim_steps", ddim_steps), ("guidance", guidance)) if v is not None}


def diffusion_eval(
    models: dict[str, str], data: Path, concept: Optional[str], classifiers: Optional[Path], out: Path, **kwargs
) -> dict:
    """`eval --suite diffusion` (`obliviate.diffusion.run.run_diffusion_eval`), its table and files printed."""
    from obliviate.demos.diffusion import table
    from obliviate.diffusion.run import run_diffusion_eval

    doc = run_diffusion_eval(models, data, concept, classifiers, out, **kwargs)
    typer.echo(table(doc["results"]))
    typer.echo(f"wrote {out}/results.json, grids/")
    return doc


def diffusion_audit(
    model: str,
    target: Optional[str],
    data: Path,
    concept: Optional[str],
    classifiers: Optional[Path],
    out: Path,
    attacks: Optional[list[str]],
    options: dict,
    **kwargs,
) -> dict:
    """`audit --suite diffusion` (`obliviate.diffusion.run.run_diffusion_audit`), its progress and figures
    printed."""
    from obliviate.diffusion.run import run_diffusion_audit

    doc = run_diffusion_audit(
        model, target, data, concept, classifiers, out, attacks, options, log=typer.echo, **kwargs
    )
    typer.echo(
        f"pre-ASR {doc['pre_asr']:.2f}; " + ", ".join(f"{a} ASR {r['asr']:.2f}" for a, r in doc["attacks"].items())
    )
    typer.echo(f"wrote {out}/audit.json")
    return doc


def diffusion_replay(
    model: str, replay: Path, data: Path, concept: Optional[str], classifiers: Optional[Path], out: Path, **kwargs
) -> dict:
    """`audit --suite diffusion --replay DIR` (`obliviate.diffusion.run.run_diffusion_replay`), its figures
    printed."""
    from obliviate.diffusion.run import run_diffusion_replay

    doc = run_diffusion_replay(model, replay, data, concept, classifiers, out, log=typer.echo, **kwargs)
    typer.echo(
        f"pre-ASR {doc['pre_asr']:.2f}; "
        + ", ".join(
            f"{a} transfer ASR {r['transfer_asr']:.2f} ({r['replayed']} replayed)" for a, r in doc["attacks"].items()
        )
    )
    typer.echo(f"wrote {out}/audit.json, findings/")
    return doc
