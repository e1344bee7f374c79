"""`obliviate guard fit NAME`: fit an inference-time guard's learned parts and save them as a guard directory."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from obliviate.cli.common import parse_options, set_threads, spec_files
from obliviate.core.errors import UsageError

guard_app = typer.Typer(no_args_is_help=True, help="Inference-time guards: fit them, then pass --guard DIR.")


@guard_app.command("fit")
def fit(name: str = typer.Argument(..., help="guard name (`obliviate ls guards`)"),
        model: str = typer.Option(..., help="the model directory the guard will guard"),
        out: Path = typer.Option(..., help="the guard directory to write (guard.json + tensors.safetensors)"),
        data: Optional[Path] = typer.Option(None, help="a world directory, or a TOFU / unlearning data directory"),
        forget: Optional[Path] = typer.Option(None, help="unlearning guards: forget QA file"),
        retain: Optional[Path] = typer.Option(None, help="unlearning guards: retain QA file"),
        forget_split: str = typer.Option("forget10", help="world / TOFU forget split"),
        harmful: List[str] = typer.Option([], help="refusal guards: KIND:FILE prompts to refuse (repeatable)"),
        benign: List[str] = typer.Option([], help="refusal guards: KIND:FILE prompts to answer (repeatable)"),
        option: List[str] = typer.Option([], help="guard option KEY=VALUE (repeatable; `obliviate ls guards`)"),
        seed: int = typer.Option(0), threads: Optional[int] = typer.Option(None)):
    """Fit NAME on the model and data (refusal guards: the world's policy_train, or the train half of public prompt
    files; unlearning guards: forget versus retain items), report held-out figures, and write OUT."""
    from obliviate.core.outputs import check_output, output_dir

    read = (model, data, forget, retain, *spec_files(harmful, benign))
    check_output(out, "guard", inputs=read)  # before anything is read or loaded
    from obliviate.audit.inputs import load_inputs
    from obliviate.guards.base import make_guard, save_guard
    from obliviate.models.load import check_model_dir, load_model

    cls, options = make_guard(name, parse_options(option))
    check_model_dir(model)
    if cls.suite == "refusal":
        inputs, _, info = load_inputs("refusal", data=data, harmful=harmful, benign=benign, seed=seed)
    else:
        if harmful or benign:
            raise UsageError(f"guard {name} guards forgetting: give --data or --forget/--retain, not prompt sets")
        inputs, _, info = load_inputs("unlearning", data=data, forget=forget, retain=retain,
                                      forget_split=forget_split, seed=seed)
        if data is not None and (Path(data) / "world_facts.jsonl").is_file():
            from obliviate.data.schema import load_qa

            inputs["world_facts"] = load_qa(Path(data) / "world_facts.jsonl")
    set_threads(threads)
    net, tok = load_model(model)
    guard = cls.fit(net, tok, inputs, **options)
    guard.attach(net, tok)
    report = guard.report(net, tok, inputs)
    with output_dir(out, "guard", inputs=read, staged=True) as o:
        save_guard(guard, o, extra={"model": str(model), "data": {k: str(v) if isinstance(v, Path) else v
                                                                  for k, v in info.items()}, "report": report})
    typer.echo(f"{name}: " + (", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in report.items()) or "fitted"))
    typer.echo(f"wrote {out}")

