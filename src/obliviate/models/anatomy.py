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
  A mixture of experts has none (its output sums several): its write axes are found by test (`expert_slots`).

The probe runs three tokens through the model once, with hooks that only record tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from obliviate.core.errors import UsageError


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
    return isinstance(m, nn.Linear) or (
        type(m).__name__ == "Conv1D" and getattr(m, "weight", None) is not None and m.weight.dim() == 2
    )


def text_config(model):
    """The language model's config (a multimodal model's text part, else the config itself)."""
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def num_experts(model) -> int | None:
    """Experts per mixture-of-experts layer, from the config's usual names (None: a dense model)."""
    cfg = text_config(model)
    return next(
        (
            getattr(cfg, k)
            for k in ("num_local_experts", "num_experts", "n_routed_experts")
            if isinstance(getattr(cfg, k, None), int)
        ),
        None,
    )


def is_fused_experts(p: torch.Tensor, n_experts: int | None) -> bool:
    """A mixture of experts' fused expert tensor [experts, ., .]: transformers 5 stores a MoE layer's experts so,
    not as Linear modules."""
    return bool(n_experts) and p.dim() == 3 and p.shape[0] == n_experts


def fused_expert_parameters(model) -> list[str]:
    """Names (after the layer index, e.g. "mlp.experts.down_proj") of the decoder layers' fused expert tensors:
    parameters of 3+ dimensions whose first is the expert count (transformers 5 stores a MoE layer's experts so,
    not as Linear modules; a short convolution's [C, 1, K] weight is not one)."""
    n = num_experts(model)
    if not n:
        return []
    out = set()
    for ly in decoder_layers(model):
        out |= {name for name, p in ly.named_parameters() if is_fused_experts(p, n)}
    return sorted(out)


def fused_expert_input_axes(model) -> list[tuple[str, nn.Parameter, int | None]]:
    """Every fused expert tensor [experts, ., .] with the axis its experts read along (what a per-output-channel
    quantiser reduces over): a tensor that writes the residual stream (its write axis found by `expert_slots`)
    reads along its other axis; one that reads the residual stream (gate / up projections) reads along its axis
    of length d. None where neither settles it (both axes of length d and no write axis)."""
    n = num_experts(model)
    if not n:
        return []
    anat = anatomy(model)
    names = {id(p): name for name, p in model.named_parameters()}
    out = []
    for w in anat.all_writers:
        fused = [p for p in w.parameters() if is_fused_experts(p, n)]
        if not fused:
            continue
        writes = {id(p): axis for p, axis in (expert_slots(w, anat.d_model) or [])}
        for p in fused:
            if id(p) in writes:
                axis = 3 - writes[id(p)]  # of the two axes after the experts', the other one
            else:
                d_axes = [a for a in (1, 2) if p.shape[a] == anat.d_model]
                axis = d_axes[0] if len(d_axes) == 1 else None
            out.append((names[id(p)], p, axis))
    return out


def decoder_layers(model) -> list[nn.Module]:
    """The model's decoder layers, in order (UsageError if no ModuleList matches the config's layer count)."""
    n = getattr(text_config(model), "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    for m in lists:
        if len(m) == n:
            return list(m)
    raise UsageError(f"could not find the decoder layers of this {type(model).__name__} (no module list of {n} layers)")


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
        raise UsageError(
            f"could not read the residual stream of this {type(model).__name__} (its decoder layers "
            "take no hidden-state tensor)"
        )
    d = seen[layers[0]][0].shape[-1]
    writers = []
    for _ly, cs in zip(layers, children):
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
            raise UsageError(
                f"could not find what layer {len(writers)} of this {type(model).__name__} writes to its residual stream"
            )
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


Slot = tuple[nn.Parameter, int]  # a parameter and the axis along which it holds written d-vectors


def projection_slots(proj: nn.Module) -> list[Slot]:
    """A Linear writes its weight's columns (weight [d, d_in]: axis 0), GPT-2's Conv1D its rows ([d_in, d]:
    axis 1); a bias [d] is written as it is."""
    slots = [(proj.weight, 0 if isinstance(proj, nn.Linear) else 1)]
    return slots + ([(proj.bias, 0)] if getattr(proj, "bias", None) is not None else [])


def project_out(p: torch.Tensor, axis: int, u: torch.Tensor) -> None:
    """p <- p with its component along unit u [d] removed on `axis` (in place)."""
    q = p.data.movedim(axis, -1)  # a view: the in-place update below writes p
    q -= (q @ u.to(q.dtype)).unsqueeze(-1) * u.to(q.dtype)


class _WriterTest:
    """A writer called alone on random inputs [1, tokens, d], to test which parameter axes it writes through:
    projecting a random unit u out of write axes must leave exactly the old output minus its u component.
    `y0` is None when the writer cannot be called on hidden states alone (attention needs positions, masks)."""

    def __init__(self, writer: nn.Module, d: int, tokens: int = 64):
        import copy

        params = list(writer.parameters())
        self.y0, self.d = None, d
        if not params:
            return
        # the test runs in float32 whatever the model's dtype (in bf16 a write axis's rounding error is about as
        # large as the tolerance): a float32 copy of a lower-precision writer, its parameters mapped by position
        self.writer = writer if params[0].dtype == torch.float32 else copy.deepcopy(writer).float()
        self.twin = dict(zip(map(id, params), self.writer.parameters()))
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(1, tokens, d, generator=g).to(params[0].device)
        u = torch.randn(d, generator=g)
        self.u = (u / u.norm()).to(params[0].device)
        self.tol = 1e-4
        y0 = self.out()
        self.y0 = y0 if y0 is not None and y0.shape[-1] == d else None

    def out(self):
        try:
            return _first(self.writer(self.x)).float()
        except (TypeError, RuntimeError, ValueError, AttributeError, IndexError):
            return None

    def _off_u(self, delta) -> float:  # the share of delta that is not along u
        uf = self.u.float()
        return float((delta - (delta @ uf).unsqueeze(-1) * uf).norm() / delta.norm().clamp(min=1e-12))

    def moves_along_u_only(self, p: nn.Parameter, axis: int) -> bool:
        p = self.twin[id(p)]
        keep = p.data.clone()
        project_out(p, axis, self.u)
        delta = self.out() - self.y0
        p.data.copy_(keep)
        return bool(delta.norm() > 0) and self._off_u(delta) <= self.tol

    def removes_u(self, slots: list[Slot]) -> bool:
        slots = [(self.twin[id(p)], axis) for p, axis in slots]
        keep = [p.data.clone() for p, _ in slots]
        for p, axis in slots:
            project_out(p, axis, self.u)
        y = self.out()
        for (p, _), k in zip(slots, keep):
            p.data.copy_(k)
        uf = self.u.float()
        want = self.y0 - (self.y0 @ uf).unsqueeze(-1) * uf
        return y is not None and bool((y - want).norm() <= self.tol * self.y0.norm().clamp(min=1e-12))


@torch.no_grad()
def expert_slots(writer: nn.Module, d: int, tokens: int = 64) -> list[Slot] | None:
    """The parameter axes through which a writer with no single projection writes, found by test: a mixture of
    experts sums (gated) expert outputs, so its output is linear in each expert's down projection (transformers 5
    fuses the experts into tensors [experts, ..., d]), in a shared expert's down projection and in the biases.
    Every axis of length d of every parameter is tried alone: projecting a random unit u out of it is a write
    axis when the writer's output then moves along u only (projecting a *read* axis, such as the router's or
    an expert's input, changes the output in other directions too). Then all the write axes are projected
    together, and the output must be exactly the old one with its u component removed; else None (a post-norm,
    or a block whose writes are not linear in its weights). Random inputs of `tokens` positions route to most
    experts; a fused tensor holds all of them, so one routed token suffices to classify it."""
    return _write_axes(writer, _WriterTest(writer, d, tokens))


def _write_axes(writer: nn.Module, test: _WriterTest) -> list[Slot] | None:
    """`expert_slots` on a writer test already built (its random inputs and first output)."""
    if test.y0 is None:
        return None
    slots = [
        (p, axis)
        for p in writer.parameters()
        for axis, n in enumerate(p.shape)
        if n == test.d and test.moves_along_u_only(p, axis)
    ]
    return slots if slots and test.removes_u(slots) else None


@torch.no_grad()
def write_slots(model, anat: Anatomy) -> list[Slot]:
    """Every writer's write axes: its projection's (`write_projection`), else its experts' (`expert_slots`);
    UsageError naming the first writer that has neither. A projection found by storage is confirmed by test
    when the writer can be called alone: Llama 4's MoE adds its routed experts *in place* into its shared
    expert's output, so that projection's output is the block's output but not all that it writes."""
    subs = [m for w in anat.all_writers for m in w.modules()]
    seen = probe_forward(model, subs)
    slots = []
    for w in anat.all_writers:
        p = write_projection(w, seen)
        found, test = projection_slots(p) if p is not None else None, None
        if found is not None and not _is_projection(w):
            test = _WriterTest(w, anat.d_model)
            if test.y0 is not None and not test.removes_u(found):
                found = None
        if found is None:
            found = _write_axes(w, test or _WriterTest(w, anat.d_model))
        if found is None:
            raise UsageError(
                f"{type(w).__name__} writes to the residual stream through no linear projection, so "
                "its weights cannot be orthogonalised (hook-based ablation still works)"
            )
        slots += found
    return slots


def embeddings(model, d: int) -> list[nn.Embedding]:
    """Embedding tables outside the decoder layers whose rows have the residual width (token, learned position)."""
    inside = {id(m) for ly in decoder_layers(model) for m in ly.modules()}
    return [m for m in model.modules() if isinstance(m, nn.Embedding) and id(m) not in inside and m.embedding_dim == d]


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
