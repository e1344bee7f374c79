"""`guard fit` as the command runs it: fit an inference-time guard's learned parts on a model and its data, and
save them as a guard directory. It lives beside the audit because it reads its data the way the audit does
(`obliviate.audit.inputs.load_inputs`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from obliviate.audit.inputs import load_inputs
from obliviate.core.errors import UsageError
from obliviate.core.outputs import check_output, output_dir
from obliviate.data.schema import load_qa


def fit_guard(
    name: str,
    model: str,
    out: Path,
    *,
    data: Path | None = None,
    forget: Path | None = None,
    retain: Path | None = None,
    forget_split: str = "forget10",
    harmful: Sequence[str] = (),
    benign: Sequence[str] = (),
    options: dict | None = None,
    seed: int = 0,
) -> dict:
    """Fit the guard `name` on `model`: what `obliviate guard fit` runs, and `obliviate.fit_guard`.

    Args:
        name: a registered guard (`obliviate ls guards`); `options` its options, e.g. {"layer": 1}.
        model: the HF model directory the guard will guard.
        out: the guard directory to write (new).
        data: refusal guards: a world directory (its policy_train), or instead `harmful` / `benign` KIND:FILE
            prompt files (their train half); unlearning guards: a world / TOFU directory (`forget_split`), or
            `forget` / `retain` question-answer files.

    Writes OUT/guard.json (guard name, options, learned state, the model, the data and `report`) and, for guards
    with tensors, OUT/tensors.safetensors; load it with `obliviate.load_guard(OUT, model, tok)` or pass
    `--guard OUT`. Returns the report: the guard's figures on held-out data."""
    from obliviate.guards.base import make_guard, save_guard
    from obliviate.models.load import check_model_dir, load_model

    harmful, benign = list(harmful), list(benign)
    read = (model, data, forget, retain, *(spec.split(":", 1)[-1] for spec in (*harmful, *benign)))
    check_output(out, "guard", inputs=read)  # before anything is read or loaded
    cls, opts = make_guard(name, options or {})
    cls(**opts)  # a guard checks its options when built: a bad one fails here, before the model loads
    check_model_dir(model)
    if cls.suite == "refusal":
        inputs, _, info = load_inputs("refusal", data=data, harmful=harmful, benign=benign, seed=seed)
    else:
        if harmful or benign:
            raise UsageError(f"guard {name} guards forgetting: give --data or --forget/--retain, not prompt sets")
        inputs, _, info = load_inputs(
            "unlearning", data=data, forget=forget, retain=retain, forget_split=forget_split, seed=seed
        )
        if data is not None and (Path(data) / "world_facts.jsonl").is_file():
            inputs["world_facts"] = load_qa(Path(data) / "world_facts.jsonl")
    net, tok = load_model(model)
    guard = cls.fit(net, tok, inputs, **opts)
    guard.attach(net, tok)
    report = guard.report(net, tok, inputs)
    with output_dir(out, "guard", inputs=read, staged=True) as o:
        save_guard(
            guard,
            o,
            extra={
                "model": str(model),
                "data": {k: str(v) if isinstance(v, Path) else v for k, v in info.items()},
                "report": report,
            },
        )
    return report
