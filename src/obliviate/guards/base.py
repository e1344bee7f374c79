"""Inference-time guards: they change what a model says without changing its weights.

A guard is a dataclass that overrides any of the hooks of the one decode loop (see `obliviate.engine.generation`):
`on_request`, `edit_embeddings`, `taps` + `on_prefill`, `process_logits`, `on_step` (every `every` tokens),
`on_finish`, `edit_routing`. Its learned parts are fitted by `fit(model, tok, inputs)` (`obliviate guard fit`),
where `inputs` are what `obliviate.audit.inputs.load_inputs` reads for the guard's `suite` (forget/retain items for
"unlearning", policy rows for "refusal"), and saved as a directory: `guard.json` (name, options, scalars) plus
`tensors.safetensors`. No pickles.

To add a guard: create `guards/my_guard.py` with a `@GUARDS.register("my_guard")` dataclass subclassing `Guard`."""

from __future__ import annotations

import importlib
import json
import pkgutil
from dataclasses import fields
from pathlib import Path

import torch

from obliviate.core.errors import UsageError
from obliviate.core.outputs import new_dir
from obliviate.core.registry import Registry
from obliviate.data.schema import read_json
from obliviate.engine.hooks import Guard, attach
from obliviate.models.anatomy import is_fused_experts, num_experts  # noqa: F401 (num_experts re-exported)

GUARDS: Registry[type["Guard"]] = Registry("guard")


FORMAT_VERSION = 1


def default_refusal() -> str:
    from obliviate.data.pools import REFUSAL_POOL
    from obliviate.data.schema import load_lines

    return load_lines(REFUSAL_POOL)[0]


@torch.no_grad()
def hidden_at(model, seqs: list[list[int]], pos: int = -1, pad_id: int = 0, max_tokens: int = 8192) -> torch.Tensor:
    """[N, L+1, d] float32: every layer's residual stream (hidden_states; 0 = embeddings) at position `pos` of each
    token sequence (negative: from the end), in batches of at most `max_tokens` padded tokens."""
    from obliviate.engine.generation import batches, left_pad
    from obliviate.models.encode import last_logits_only

    device, out = next(model.parameters()).device, [None] * len(seqs)
    for idx in batches(seqs, len(seqs), max_tokens):
        ids, mask = left_pad([seqs[k] for k in idx], pad_id, device)
        # no logits are read here: keep the last position's only, the least the model will compute
        hs = model(
            input_ids=ids, attention_mask=mask, output_hidden_states=True, **last_logits_only(model)
        ).hidden_states
        states = torch.stack([h[:, pos] for h in hs], 1).float().cpu()
        for r, k in enumerate(idx):
            out[k] = states[r]
    return torch.stack(out)


def youden_threshold(scores, labels) -> float:
    """The score threshold that maximises Youden's J (TPR - FPR) on (scores, labels), as sklearn's roc_curve
    lists them; flag when score >= threshold."""
    import numpy as np
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(np.asarray(labels), np.asarray(scores))
    best = int(np.argmax(tpr - fpr))
    return float(min(thr[best], np.max(scores)))


def save_guard(guard: Guard, out: Path, extra: dict | None = None) -> Path:
    """Write guard.json + tensors.safetensors into `out`: a new directory (a temp dir renamed at the end: no
    half-written guard), or a fresh one `outputs.output_dir` made. An existing guard is never replaced."""
    from safetensors.torch import save_file

    out = Path(out)
    with new_dir(out, "a guard") as d:
        doc = {
            "guard": guard.name,
            "format_version": FORMAT_VERSION,
            "options": guard.options(),
            "state": guard.state(),
            **(extra or {}),
        }
        (d / "guard.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
        tensors = {k: v.detach().cpu().contiguous() for k, v in guard.tensors().items()}
        if tensors:
            save_file(tensors, str(d / "tensors.safetensors"))
    return out


def check_guard_dirs(paths) -> None:
    """Fail fast (before any model loads) on a --guard that is not a guard directory or whose guard.json is
    malformed."""
    for p in paths:
        read_guard_spec(p)


def _option_ok(value, default) -> bool:
    """Whether a guard.json option has the type of the field's default (an int is a float; a bool is no number)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default)) if default is not None else isinstance(value, str)


def read_guard_spec(path: str | Path) -> tuple[type[Guard], dict, dict]:
    """(guard class, options, state) of a guard directory's guard.json, checked: an object whose "guard" names a
    registered guard, "options" an object of that guard's fields with their types, "state" an object. Anything
    else is a one-line UsageError naming the file."""
    load_all()
    path = Path(path)
    spec = path / "guard.json"
    if not spec.is_file():
        raise UsageError(f"--guard {path}: not a guard directory (no guard.json; make one with `obliviate guard fit`)")
    doc = read_json(spec)
    if not isinstance(doc, dict):
        raise UsageError(f"{spec}: malformed guard file (expected a JSON object, got {type(doc).__name__})")
    name, options, state = doc.get("guard"), doc.get("options", {}), doc.get("state") or {}
    if not isinstance(name, str):
        raise UsageError(f"{spec}: malformed guard file ('guard' must be a guard's name, got {type(name).__name__})")
    version = doc.get("format_version", FORMAT_VERSION)
    if type(version) is not int:
        raise UsageError(
            f"{spec}: malformed guard file ('format_version' must be an integer, got {type(version).__name__})"
        )
    if version > FORMAT_VERSION:
        raise UsageError(
            f"{spec}: guard format_version {version} is newer than this obliviate reads "
            f"({FORMAT_VERSION}); upgrade obliviate or fit the guard again"
        )
    for key, value in (("options", options), ("state", state)):
        if not isinstance(value, dict):
            raise UsageError(f"{spec}: malformed guard file ({key!r} must be an object, got {type(value).__name__})")
    try:
        cls = GUARDS.get(name)
    except UsageError as e:
        raise UsageError(f"{spec}: {e}") from None
    known = {f.name: f.default for f in fields(cls) if not f.name.startswith("_")}
    for key, value in options.items():
        if key not in known:
            raise UsageError(f"{spec}: unknown option {key!r} for guard {name}")
        if not _option_ok(value, known[key]):
            raise UsageError(
                f"{spec}: option {key!r} of guard {name} must be {type(known[key]).__name__}, got "
                f"{type(value).__name__}"
            )
    options = {k: float(v) if isinstance(known[k], float) else v for k, v in options.items()}
    return cls, options, state


def attach_guards(model, tok, paths) -> None:
    """Load the guard directories `paths` (`obliviate guard fit`) for (model, tok) and attach them in order, so
    that generation and the teacher-forced metrics apply them (`obliviate.engine.hooks.attach`); none: nothing."""
    if paths:
        attach(model, [load_guard(g, model, tok) for g in paths])


def load_guard(path: str | Path, model=None, tok=None) -> Guard:
    """A guard directory -> a Guard bound to (model, tok). Missing or malformed files are UsageErrors naming the
    file: guard.json (`read_guard_spec`), an unreadable tensors.safetensors, or state and tensors that the guard
    cannot take."""
    from safetensors import SafetensorError

    path = Path(path)
    cls, options, state = read_guard_spec(path)
    spec, weights = path / "guard.json", path / "tensors.safetensors"
    try:
        guard = cls(**options)  # __post_init__ checks the values
    except UsageError as e:
        raise UsageError(f"{spec}: {e}") from None
    tensors = None
    if weights.is_file():
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(weights))
        except (SafetensorError, OSError) as e:
            raise UsageError(f"{weights}: unreadable tensors file ({_first_line(e)})") from None
    try:  # the learned state of guard.json and the tensors, as the guard's own loaders read them
        guard.load_state(state)
        if tensors is not None:
            guard.load_tensors(tensors)
        unfitted = [k for k, v in {**guard.state(), **guard.tensors()}.items() if v is None]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        held = "guard.json and tensors.safetensors do" if tensors is not None else "guard.json does"
        raise UsageError(
            f"{path}: {held} not hold the state of a fitted {cls.name} guard ({type(e).__name__}: {_first_line(e)})"
        ) from None
    if unfitted:
        raise UsageError(
            f"{path}: the {cls.name} guard is not fitted ({', '.join(unfitted)} missing from guard.json "
            "or tensors.safetensors); fit it with `obliviate guard fit`"
        )
    if model is not None:
        guard.attach(model, tok)
    return guard


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0].strip()[:200]


def make_guard(name: str, options: dict | None = None) -> type[Guard]:
    """(guard class, cast options) for `--option k=v` strings."""
    from obliviate.core.options import cast_options

    load_all()
    cls = GUARDS.get(name)
    return cls, cast_options(cls, options or {}, f"guard {name}")


def load_all() -> None:
    for m in pkgutil.iter_modules([str(Path(__file__).parent)]):  # every guard file beside this one
        if m.name != "base":
            importlib.import_module(f"obliviate.guards.{m.name}")
