"""`obliviate erase`: erase a concept from a text-to-image diffusion model (diffusers directory)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from obliviate.cli.common import parse_options, set_threads
from obliviate.errors import UsageError


def erase(method: str = typer.Argument(..., help="eraser name (`obliviate ls erasers`)"),
          model: Path = typer.Option(..., help="a diffusers text-to-image directory (unet/, text_encoder/, ...)"),
          concept: str = typer.Option(..., help="the concept to erase, in the model's words, e.g. 'star'"),
          out: Path = typer.Option(..., help="the edited model's directory"),
          guide: str = typer.Option("", help="what the concept should turn into (default: the empty prompt)"),
          preserve: List[str] = typer.Option([], help="a concept to keep as it was (repeatable)"),
          option: List[str] = typer.Option([], help="eraser option KEY=VALUE (repeatable)"),
          threads: Optional[int] = typer.Option(None)):
    """Erase CONCEPT with METHOD and save the edited model to OUT (same layout as the input)."""
    import time

    from obliviate.diffusion.erasers import ERASERS, load_all
    from obliviate.diffusion.model import load_t2i, unknown_words

    load_all()
    eraser = ERASERS.get(method).from_options(parse_options(option))
    if Path(out).resolve() == Path(model).resolve():
        raise UsageError(f"--out {out} would overwrite the input model")
    if not concept.strip():
        raise UsageError("--concept must not be empty")
    set_threads(threads)
    t2i = load_t2i(model)
    for text in [concept, guide, *preserve]:
        missing = unknown_words(t2i.tokenizer, text)
        if missing:
            raise UsageError(f"the model's tokenizer does not know {missing[0]!r} (in {text!r})")
    t0 = time.perf_counter()
    edited = eraser.erase(t2i, concept, guide=guide, preserve=tuple(preserve))
    edited.save(out)
    typer.echo(f"{method}: erased {concept!r} in {time.perf_counter() - t0:.1f} s; wrote {out}")
