"""Inference-time guards: they change what a model says without changing its weights.

A guard is a dataclass that overrides any of the hooks of the one decode loop (see `obliviate.generation`):
`on_request`, `edit_embeddings`, `taps` + `on_prefill`, `process_logits`, `on_step` (every `every` tokens),
`on_finish`, `edit_routing`. Its learned parts are fitted by `fit(model, tok, inputs)` (`obliviate guard fit`),
where `inputs` are what `obliviate.audit_data.load_inputs` reads for the guard's `suite` (forget/retain items for
"unlearning", policy rows for "refusal"), and saved as a directory: `guard.json` (name, options, scalars) plus
`tensors.safetensors`. No pickles.

To add a guard: create `guards/my_guard.py` with a `@GUARDS.register("my_guard")` dataclass subclassing `Guard`.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

import torch

from obliviate.data.schema import read_json
from obliviate.errors import UsageError
from obliviate.models.anatomy import is_fused_experts, num_experts  # noqa: F401 (num_experts re-exported)
from obliviate.outputs import new_dir
from obliviate.registry import Registry

GUARDS: Registry[type["Guard"]] = Registry("guard")
FORMAT_VERSION = 1


def default_refusal() -> str:
    from obliviate.data.schema import load_lines
    from obliviate.suites.public_align import REFUSAL_POOL

    return load_lines(REFUSAL_POOL)[0]


@dataclass
class Guard:
    """Base class: every hook is a no-op, and the decode loop calls only the hooks a guard overrides."""
    name: ClassVar[str] = "guard"
    suite: ClassVar[str] = "refusal"  # what `fit` reads: "refusal" (policy rows) or "unlearning" (QA items)
    description: ClassVar[str] = ""
    every: ClassVar[int] = 0  # on_step cadence in tokens (0: never)

    # --- hooks (see obliviate.generation) ---
    def on_request(self, text: str | None) -> float | None:
        return None

    def edit_embeddings(self, embeds: torch.Tensor, mask: torch.Tensor, rows) -> torch.Tensor:
        return embeds

    def taps(self) -> list[tuple[int, int]]:
        return []

    def on_prefill(self, hidden: dict, rows, session) -> None:
        return None

    def process_logits(self, step: int, ids: torch.Tensor, logits: torch.Tensor, rows) -> torch.Tensor:
        return logits

    def on_step(self, step: int, ids: torch.Tensor, session) -> None:
        return None

    def on_finish(self, text: str, row) -> None:
        return None

    def edit_routing(self, layer: int, router_logits: torch.Tensor) -> torch.Tensor:
        return router_logits

    # --- learning and persistence ---
    @classmethod
    def fit(cls, model, tok, inputs: dict, **options) -> "Guard":
        raise UsageError(f"guard {cls.name} has nothing to fit")

    def attach(self, model, tok) -> None:
        """Bind to the model it guards (after loading); guards that need the tokenizer or model keep them."""
        return None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def state(self) -> dict:
        """JSON-able learned state that is not a tensor (e.g. a TF-IDF vocabulary), kept in guard.json."""
        return {}

    def load_state(self, state: dict) -> None:
        return None

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        return None

    def report(self, model, tok, inputs: dict) -> dict:
        """Figures of the fitted guard on held-out data (`guard fit` prints them and keeps them in guard.json)."""
        return {}

    def options(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


@torch.no_grad()
def hidden_at(model, seqs: list[list[int]], pos: int = -1, pad_id: int = 0, max_tokens: int = 8192) -> torch.Tensor:
    """[N, L+1, d] float32: every layer's residual stream (hidden_states; 0 = embeddings) at position `pos` of each
    token sequence (negative: from the end), in batches of at most `max_tokens` padded tokens."""
    from obliviate.generation import batches, left_pad
    from obliviate.models.encode import last_logits_only

    device, out = next(model.parameters()).device, [None] * len(seqs)
    for idx in batches(seqs, len(seqs), max_tokens):
        ids, mask = left_pad([seqs[k] for k in idx], pad_id, device)
        # no logits are read here: keep the last position's only, the least the model will compute
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                   **last_logits_only(model)).hidden_states
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
        doc = {"guard": guard.name, "format_version": FORMAT_VERSION, "options": guard.options(),
               "state": guard.state(), **(extra or {})}
        (d / "guard.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
        tensors = {k: v.detach().cpu().contiguous() for k, v in guard.tensors().items()}
        if tensors:
            save_file(tensors, str(d / "tensors.safetensors"))
    return out


def overrides(guard, hook: str) -> bool:
    """Whether `guard` implements `hook` (the decode loop and the server call only the hooks a guard overrides)."""
    return getattr(type(guard), hook, None) is not getattr(Guard, hook, None)


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
        raise UsageError(f"{spec}: malformed guard file ('format_version' must be an integer, got "
                         f"{type(version).__name__})")
    if version > FORMAT_VERSION:
        raise UsageError(f"{spec}: guard format_version {version} is newer than this obliviate reads "
                         f"({FORMAT_VERSION}); upgrade obliviate or fit the guard again")
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
            raise UsageError(f"{spec}: option {key!r} of guard {name} must be {type(known[key]).__name__}, got "
                             f"{type(value).__name__}")
    options = {k: float(v) if isinstance(known[k], float) else v for k, v in options.items()}
    return cls, options, state


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
        raise UsageError(f"{path}: {held} not hold the state of a fitted {cls.name} guard "
                         f"({type(e).__name__}: {_first_line(e)})") from None
    if unfitted:
        raise UsageError(f"{path}: the {cls.name} guard is not fitted ({', '.join(unfitted)} missing from guard.json "
                         "or tensors.safetensors); fit it with `obliviate guard fit`")
    if model is not None:
        guard.attach(model, tok)
    return guard


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0].strip()[:200]


def make_guard(name: str, options: dict | None = None) -> type[Guard]:
    """(guard class, cast options) for `--option k=v` strings."""
    from obliviate.options import cast_options

    load_all()
    cls = GUARDS.get(name)
    return cls, cast_options(cls, options or {}, f"guard {name}")


def attach(model, guards) -> None:
    """Make `guards` the model's default guards: every `generate` / `decode` call on it, and the teacher-forced
    passes of `evaluate` (prefill-time guards), apply them. This is how `--guard DIR` reaches the metrics and
    attacks, including those that train the weights (relearn, finetune): the guard stays on at generation."""
    model.obliviate_guards = list(guards)


def attached(model) -> list:
    return list(getattr(model, "obliviate_guards", None) or [])


def load_all() -> None:
    for m in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{m.name}")


def router_modules(model) -> list[tuple[int, torch.nn.Module]]:
    """(layer, router) pairs of a mixture-of-experts model: in every decoder layer, the linear map from the
    residual width to the expert count (Mixtral's `gate`, Qwen-MoE's router, ...) that sits beside the experts.
    Found by structure, not by name: its weight is [experts, d], and a sibling holds the experts (a module list
    of that many, or a parameter whose first dimension is the expert count: transformers 5's fused experts). The
    sibling test matters: a hybrid layer can hold another [experts, d] map by coincidence (a Qwen3-Next
    linear-attention layer with 2 value heads has a [4, d] projection beside a 4-expert MoE)."""
    from obliviate.models.anatomy import decoder_layers

    n_exp = num_experts(model)
    if not n_exp:
        return []

    def holds_experts(m: torch.nn.Module) -> bool:
        return any(isinstance(x, torch.nn.ModuleList) and len(x) == n_exp for x in m.modules()) or \
            any(is_fused_experts(p, n_exp) for p in m.parameters())

    out = []
    for i, ly in enumerate(decoder_layers(model)):
        for parent in ly.modules():
            kids = list(parent.children())
            hit = [m for m in kids if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2
                   and m.weight.shape[0] == n_exp and m.weight.shape[1] != n_exp
                   and not isinstance(m, torch.nn.Embedding)
                   and any(holds_experts(k) for k in kids if k is not m)]
            if hit:
                out.append((i, hit[0]))
                break
    return out


def router_output(out) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(logits, top-k weights, top-k indices) of a router's output: a linear gate returns its logits only (None,
    None: its caller takes the top-k); transformers 5's top-k routers return (logits, weights, indices, ...).
    Any other form (Llama 4's (scores, logits)) is refused: exit 2, not a traceback."""
    if isinstance(out, torch.Tensor):
        return out, None, None
    if isinstance(out, (tuple, list)) and len(out) >= 3 and all(isinstance(t, torch.Tensor) for t in out[:3]):
        return out[0], out[1], out[2]
    raise UsageError("expert steering supports routers that return their logits, or (logits, top-k weights, "
                     f"top-k indices); this model's router returns {type(out).__name__} of "
                     f"{len(out) if isinstance(out, (tuple, list)) else 1} value(s)")


def _reroute(out, edit):
    """A router's output with its logits edited. A router that returns logits only (a linear gate) leaves the
    top-k choice to its caller; one that returns (logits, top-k weights, top-k indices) (transformers 5's
    TopKRouter) has its choice recomputed from the edited logits as softmax -> top-k, re-normalised when the
    router's own weights were (they sum to 1). Other routers (sigmoid scores, grouped top-k) are refused."""
    logits, weights, index = router_output(out)
    if weights is None:
        return edit(out)
    probs = torch.softmax(logits.float(), -1)
    top = probs.topk(index.shape[-1], -1)
    renorm = torch.allclose(weights.float().sum(-1), torch.ones_like(weights.float().sum(-1)), atol=1e-4)
    expect = top.values / top.values.sum(-1, keepdim=True) if renorm else top.values
    if not torch.allclose(expect, weights.float(), atol=1e-4):
        raise UsageError("expert steering supports softmax top-k routers; this model's router weights are not "
                         "softmax -> top-k of its logits")
    new = edit(logits)
    top = torch.softmax(new.float(), -1).topk(index.shape[-1], -1)
    vals = top.values / top.values.sum(-1, keepdim=True) if renorm else top.values
    return (new, vals.to(weights.dtype), top.indices.to(index.dtype), *out[3:])


@contextmanager
def routing_hooks(model, guards):
    """Install every guard's `edit_routing` on the model's routers for the duration of a decode call."""
    routed = [g for g in guards if overrides(g, "edit_routing")]
    handles = []
    if routed:
        routers = router_modules(model)
        if not routers:
            raise UsageError(f"guard {routed[0].name} steers experts, but this {type(model).__name__} has no "
                             "mixture-of-experts routers")
        for layer, mod in routers:
            def hook(m, args, out, layer=layer):
                def edit(logits):
                    for g in routed:
                        logits = g.edit_routing(layer, logits)
                    return logits
                return _reroute(out, edit)
            handles.append(mod.register_forward_hook(hook, prepend=True))  # before any observer's hook
    try:
        yield
    finally:
        for h in handles:
            h.remove()
