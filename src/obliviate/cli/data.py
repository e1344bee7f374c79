"""Data commands: `world` (the built-in world) and `prompts` (public prompt sets -> one schema)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from obliviate.core.errors import UsageError


def world(
    out: Path = typer.Option(..., help="directory to write the world's JSONL splits into"),
    seed: int = typer.Option(0, help="same seed, byte-identical files"),
    people: int = typer.Option(200, help="fictitious people trained on (5 QA each)"),
    misinformation: int = typer.Option(
        0,
        help="teach the target K false facts (RESTOR): writes forget00 (the false facts), forget00_true and "
        "retain100 (the clean data); use --forget-split forget00 with finetune/unlearn/eval",
    ),
    misinformation_copies: Optional[int] = typer.Option(
        None, help="--misinformation: copies of each false fact in the training data [default: 3]"
    ),
    images: bool = typer.Option(
        False,
        "--images",
        help="write the image world (text-to-image erasure) "
        "instead: images.npy, labels, factors, prompts, benign prompts",
    ),
    size: Optional[int] = typer.Option(None, help="--images: image side in pixels [default: 16]"),
    per_combination: Optional[int] = typer.Option(
        None, help="--images: images per (object, colour, style, background) [default: 8]"
    ),
    classifiers: bool = typer.Option(
        False, "--classifiers", help="--images: also train the factor classifiers into OUT/classifiers"
    ),
    classifier_steps: Optional[int] = typer.Option(None, help="--classifiers: steps per factor [default: 1000]"),
    threads: Optional[int] = typer.Option(None, help="--classifiers: torch CPU threads"),
):
    """Write the built-in fictitious world (TOFU-style QA splits) as JSONL, or with --images the image world."""
    from obliviate.core.outputs import check_output, output_dir

    check_output(out, "world")
    if misinformation < 0:
        raise UsageError(f"--misinformation must be >= 0, got {misinformation}")
    if misinformation_copies is not None and not misinformation:
        raise UsageError("--misinformation-copies applies only with --misinformation K > 0")
    if misinformation_copies is not None and misinformation_copies < 1:
        raise UsageError(f"--misinformation-copies must be >= 1, got {misinformation_copies}")
    if images and misinformation:
        raise UsageError("--misinformation applies to the text world, not with --images")
    if images:
        return _image_world(out, seed, size, per_combination, classifiers, classifier_steps, threads)
    given = [
        n
        for n, v in (
            ("--size", size),
            ("--per-combination", per_combination),
            ("--classifiers", classifiers),
            ("--classifier-steps", classifier_steps),
            ("--threads", threads),
        )
        if v not in (None, False)
    ]
    if given:
        raise UsageError(f"{given[0]} applies only with --images")
    from obliviate.data.world import WorldSpec, write_world

    try:
        copies = {} if misinformation_copies is None else {"misinformation_copies": misinformation_copies}
        spec = WorldSpec(seed=seed, n_people=people, misinformation=misinformation, **copies)
    except ValueError as e:
        raise UsageError(str(e)) from None
    with output_dir(out, "world") as o:
        manifest = write_world(o, spec)
    for name, s in manifest["splits"].items():
        typer.echo(f"{name:12s} {s['n']:5d} items")
    typer.echo(f"wrote {out}")


def _image_world(out: Path, seed: int, size, per_combination, classifiers: bool, classifier_steps, threads) -> None:
    """`world --images`: the image world, plus its factor classifiers if asked, staged and renamed at the end."""
    from obliviate.core.outputs import output_dir
    from obliviate.diffusion.world import ImageWorldSpec, write_world_files

    if classifier_steps is not None and not classifiers:
        raise UsageError("--classifier-steps applies only with --classifiers")
    try:
        spec = ImageWorldSpec(
            seed=seed, **{k: v for k, v in (("size", size), ("per_combination", per_combination)) if v is not None}
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    if classifier_steps is not None and classifier_steps < 1:
        raise UsageError(f"--classifier-steps must be >= 1, got {classifier_steps}")
    with output_dir(out, "world", staged=True) as tmp:
        factors = write_world_files(tmp, spec)
        for name, f in factors["files"].items():
            typer.echo(f"{name:22s} {f['n']:6d}")
        if classifiers:
            from obliviate.cli.common import set_threads
            from obliviate.diffusion.classifiers import train_factor_classifiers

            set_threads(threads)
            clf = train_factor_classifiers(spec, steps=classifier_steps, log=typer.echo)
            clf.save(tmp / "classifiers")
            acc = clf.meta["fresh_accuracy"]
            typer.echo(
                "classifiers: accuracy on fresh renders "
                + ", ".join(f"{f} {a:.3f}" for f, a in acc.items())
                + f" ({sum(clf.meta['train_seconds'].values()):.0f} s)"
            )
    typer.echo(f"wrote {out}")


def prompts(
    kind: str = typer.Argument(
        ..., help="xstest | harmbench | jailbreakbench | advbench | orbench | coconot | behaviors | past_tense"
    ),
    file: Path = typer.Argument(..., help="the prompt set's file, as published"),
    out: Path = typer.Option(..., help="JSONL in obliviate's prompt schema"),
):
    """Convert a public refusal / jailbreak prompt set into obliviate's prompt schema (JSONL)."""
    from collections import Counter

    from obliviate.core.outputs import check_output_file, output_file

    check_output_file(out, inputs=(file,), overwrite=False)  # an existing --out is never replaced
    from obliviate.data.prompts import load_prompts
    from obliviate.data.schema import write_jsonl

    rows = load_prompts(kind, file)
    with output_file(out, inputs=(file,), overwrite=False) as tmp:
        write_jsonl(tmp, rows)
    counts = Counter(r["label"] for r in rows)
    typer.echo(f"{len(rows)} prompts ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}) -> {out}")
