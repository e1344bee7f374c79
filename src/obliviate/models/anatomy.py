"""Where a decoder-only transformer keeps its residual stream, found by structure and by one probe forward pass,
never by module names, so that white-box attacks and guards work on any architecture transformers loads.

- The decoder layers: the `nn.ModuleList` of the base model whose length is the config's layer count.
- The residual writers of each layer: its direct children whose output (first element when a tuple) has the
  residual width d and is not read by another child of the layer. A normalisation child whose input is such an
  output is a post-norm (Gemma 2/3, OLMo 2): what reaches the residual stream is the norm's output, so the norm is
  the writer. Dropout children pass their input through at eval time and are skipped. Parallel-residual layers
  (GPT-NeoX, Falcon, Phi) and sequential ones (Llama, Qwen, GPT-2, OPT's bare fc2) fall out of the same rule.
- The write projection of a writer, for weight editing: the `nn.Linear` (or GPT-2's `Conv1D`, weight [in, out])
  inside it whose output tensor *is* the writer's output (same storage), possibly through eval-time dropouts.

The probe runs three tokens through the model once, with hooks that only record tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from obliviate.errors import UsageError


def _first(x):
    """The tensor in a module's output: itself, or the first element of a tuple / ModelOutput."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    return None


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(m).__name__.lower()


def _passes_through(m: nn.Module) -> bool:
    return isinstance(m, (nn.Dropout, nn.Identity))


def _is_projection(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (type(m).__name__ == "Conv1D" and getattr(m, "weight", None) is not None
                                        and m.weight.dim() == 2)


def text_config(model):
    """The language model's config (a multimodal model's text part, else the config itself)."""
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def decoder_layers(model) -> list[nn.Module]:
    """The model's decoder layers, in order (UsageError if no ModuleList matches the config's layer count)."""
    n = getattr(text_config(model), "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    for m in lists:
        if len(m) == n:
            return list(m)
    raise UsageError(f"could not find the decoder layers of this {type(model).__name__} (no module list of "
                     f"{n} layers)")


@dataclass
class Anatomy:
    layers: list[nn.Module]
    d_model: int
    writers: list[list[nn.Module]]  # per layer: the modules whose outputs are added to the residual stream

    @property
    def all_writers(self) -> list[nn.Module]:
        return [w for ws in self.writers for w in ws]


class _Recorder:
    """Forward hooks that keep (input, output) tensors of the given modules for one pass."""

    def __init__(self, modules):
        self.seen: dict[nn.Module, tuple] = {}
        self.handles = [m.register_forward_hook(self._hook, with_kwargs=True) for m in modules]

    def _hook(self, mod, args, kwargs, out):
        x = _first(args) if args else _first(kwargs.get("hidden_states"))
        self.seen.setdefault(mod, (x, _first(out)))

    def close(self):
        for h in self.handles:
            h.remove()


def _same(a, b) -> bool:
    return a is not None and b is not None and a.shape == b.shape and a.data_ptr() == b.data_ptr()


@torch.no_grad()
def probe_forward(model, modules) -> dict:
    """Run three tokens through the model and return {module: (input, output)} for `modules`."""
    rec = _Recorder(modules)
    try:
        device = next(model.parameters()).device
        ids = torch.arange(3, device=device).unsqueeze(0) % max(1, model.get_input_embeddings().num_embeddings)
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        rec.close()
    return rec.seen


def anatomy(model) -> Anatomy:
    layers = decoder_layers(model)
    children = [list(ly.children()) for ly in layers]
    seen = probe_forward(model, layers + [c for cs in children for c in cs])
    if layers[0] not in seen or seen[layers[0]][0] is None:
        raise UsageError(f"could not read the residual stream of this {type(model).__name__} (its decoder layers "
                         "take no hidden-state tensor)")
    d = seen[layers[0]][0].shape[-1]
    writers = []
    for ly, cs in zip(layers, children):
        io = {c: seen[c] for c in cs if c in seen}
        inputs = [x for c, (x, _) in io.items() if not _passes_through(c) and not _is_norm(c)]
        found = []
        for c, (_, y) in io.items():
            if _is_norm(c) or _passes_through(c) or y is None or y.shape[-1] != d:
                continue
            if any(_same(y, x) for x in inputs):  # read by a sibling (OPT's fc1 -> activation -> fc2)
                continue
            post = [n for n, (x, _) in io.items() if _is_norm(n) and _same(x, y)]
            found.append(post[0] if post else c)
        if not found:
            raise UsageError(f"could not find what layer {len(writers)} of this {type(model).__name__} writes to "
                             "its residual stream")
        writers.append(found)
    return Anatomy(layers, d, writers)


def write_projection(writer: nn.Module, seen: dict) -> nn.Module | None:
    """The Linear / Conv1D inside `writer` whose output is the writer's output (None: there is none, e.g. a
    post-norm, or a mixture of experts that sums several projections)."""
    if _is_projection(writer):
        return writer
    out = seen.get(writer, (None, None))[1]
    subs = [m for m in writer.modules() if m is not writer and m in seen]
    for _ in range(8):  # walk back through eval-time dropouts
        hit = [m for m in subs if _same(seen[m][1], out)]
        proj = [m for m in hit if _is_projection(m)]
        if proj:
            return proj[-1]
        thru = [m for m in hit if _passes_through(m)]
        if not thru:
            return None
        out = seen[thru[0]][0]
    return None


def write_projections(model, anat: Anatomy) -> list[nn.Module]:
    """Every writer's projection (UsageError naming the first writer that has none)."""
    subs = [m for w in anat.all_writers for m in w.modules()]
    seen = probe_forward(model, subs)
    projs = []
    for w in anat.all_writers:
        p = write_projection(w, seen)
        if p is None:
            raise UsageError(f"{type(w).__name__} writes to the residual stream through no single linear "
                             "projection, so its weights cannot be orthogonalised (hook-based ablation still works)")
        projs.append(p)
    return projs


def embeddings(model, d: int) -> list[nn.Embedding]:
    """Embedding tables outside the decoder layers whose rows have the residual width (token, learned position)."""
    inside = {id(m) for ly in decoder_layers(model) for m in ly.modules()}
    return [m for m in model.modules() if isinstance(m, nn.Embedding) and id(m) not in inside
            and m.embedding_dim == d]


def final_norm(model) -> nn.Module | None:
    """The normalisation whose output the unembedding reads (None: the head reads an un-normalised state)."""
    head = model.get_output_embeddings()
    if head is None:
        return None
    inside = {id(m) for ly in decoder_layers(model) for m in ly.modules()}
    norms = [m for m in model.modules() if _is_norm(m) and id(m) not in inside and m is not head]
    seen = probe_forward(model, norms + [head])
    x = seen.get(head, (None, None))[0]
    return next((n for n in norms if n in seen and _same(seen[n][1], x)), None)
