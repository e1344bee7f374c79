"""Listings and environment: `ls`, `env`."""

from __future__ import annotations

import os

import typer

from obliviate.core.errors import UsageError


def ls(
    what: str = typer.Argument(..., help="methods | refusal-methods | attacks | guards | erasers | metrics | suites"),
):
    """List registered methods, refusal methods, attacks, guards, erasers, metrics or suites, one per line."""
    if what == "erasers":
        from dataclasses import fields

        from obliviate.diffusion.erasers import ERASERS
        from obliviate.diffusion.erasers import load_all as load_erasers

        load_erasers()
        for name, cls in ERASERS.items():
            opts = ", ".join(f"{f.name}={f.default}" for f in fields(cls))
            typer.echo(f"{name:8s} {cls.description}")
            typer.echo(f"{'':8s} options: {opts or 'none'}")
    elif what == "guards":
        from dataclasses import fields

        from obliviate.guards.base import GUARDS, load_all

        load_all()
        w = max(len(n) for n in GUARDS.names())
        for name, cls in GUARDS.items():
            opts = ", ".join(f"{f.name}={f.default}" for f in fields(cls) if not f.name.startswith("_"))
            typer.echo(f"{name:{w}s}  {cls.suite:10s}  {cls.description}")
            typer.echo(f"{'':{w}s}  {'':10s}  options: {opts or 'none'}")
    elif what == "attacks":
        from obliviate.audit.attacks import ATTACKS

        w = max(len(n) for n in ATTACKS.names())
        ws = max(len(",".join(c.suites)) for _, c in ATTACKS.items())
        for name, cls in ATTACKS.items():
            when = "default" if cls.default else "opt-in "
            typer.echo(f"{name:{w}s}  {','.join(cls.suites):{ws}s}  {when}  {cls.description}")
    elif what == "suites":
        from obliviate.benchmarks.layouts import SUITES

        for name, s in SUITES.items():
            typer.echo(f"{name:8s} {s.description}")
    elif what in ("methods", "refusal-methods"):
        from dataclasses import fields

        from obliviate.refusal.methods import REFUSAL_METHODS
        from obliviate.unlearning.methods import METHODS

        for name, cls in (METHODS if what == "methods" else REFUSAL_METHODS).items():
            opts = ", ".join(f"{f.name}={f.default}" for f in fields(cls))
            typer.echo(f"{name:12s} {opts}")
    elif what == "metrics":
        from obliviate.metrics import METRICS

        arrow = {True: "higher", False: "lower", None: "oracle"}
        for name, m in METRICS.items():
            typer.echo(f"{name:28s} {arrow[m.higher_is_better]:6s} {m.description}")
    else:
        raise UsageError(
            f"unknown listing {what!r}; use 'methods', 'refusal-methods', 'attacks', 'guards', "
            "'erasers', 'metrics' or 'suites'"
        )


def env():
    """Print versions, threads and the device obliviate would use (paste it into bug reports)."""
    import platform

    import torch

    from obliviate.core.version import __version__

    typer.echo(f"obliviate    {__version__}")
    typer.echo(f"python       {platform.python_version()} ({platform.machine()})")
    for mod in ("torch", "transformers", "tokenizers", "peft", "accelerate"):
        try:
            typer.echo(f"{mod:12s} {__import__(mod).__version__}")
        except ImportError:
            typer.echo(f"{mod:12s} not installed")
    typer.echo(f"threads      {torch.get_num_threads()}")
    cuda = torch.cuda.is_available()
    typer.echo(f"device       {torch.cuda.get_device_name(0) if cuda else 'cpu'}")
    typer.echo(f"hub offline  {os.environ.get('HF_HUB_OFFLINE', '0') not in ('', '0')}")
