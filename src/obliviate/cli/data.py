"""Data commands: `world` (the built-in world) and `prompts` (public prompt sets -> one schema)."""

from __future__ import annotations

from pathlib import Path

import typer


from obliviate.errors import UsageError


def world(out: Path = typer.Option(..., help="directory to write the world's JSONL splits into"),
          seed: int = typer.Option(0, help="same seed, byte-identical files"),
          people: int = typer.Option(200, help="fictitious people trained on (5 QA each)")):
    """Write the built-in fictitious world (TOFU-style QA splits) as JSONL."""
    from obliviate.data.world import WorldSpec, write_world
    from obliviate.pipeline import fresh_output

    try:
        spec = WorldSpec(seed=seed, n_people=people)
    except ValueError as e:
        raise UsageError(str(e)) from None
    with fresh_output(out) as o:
        manifest = write_world(o, spec)
    for name, s in manifest["splits"].items():
        typer.echo(f"{name:12s} {s['n']:5d} items")
    typer.echo(f"wrote {out}")


def prompts(kind: str = typer.Argument(..., help="xstest | harmbench | jailbreakbench | advbench | orbench | coconot"),
            file: Path = typer.Argument(..., help="the prompt set's file, as published"),
            out: Path = typer.Option(..., help="JSONL in obliviate's prompt schema")):
    """Convert a public refusal / jailbreak prompt set into obliviate's prompt schema (JSONL)."""
    from collections import Counter

    from obliviate.data.prompts import load_prompts
    from obliviate.data.schema import write_jsonl

    rows = load_prompts(kind, file)
    if out.exists():
        raise UsageError(f"{out} exists; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, rows)
    counts = Counter(r["label"] for r in rows)
    typer.echo(f"{len(rows)} prompts ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}) -> {out}")
