"""The guard-hook protocol: the `Guard` base class whose hooks the decode loop calls, attaching guards to a
model, and the mixture-of-experts routing hooks."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from obliviate.core.errors import UsageError
from obliviate.models.anatomy import is_fused_experts, num_experts  # noqa: F401 (num_experts re-exported)


@dataclass
class Guard:
    """Base class: every hook is a no-op, and the decode loop calls only the hooks a guard overrides."""

    name: ClassVar[str] = "guard"
    suite: ClassVar[str] = "refusal"  # what `fit` reads: "refusal" (policy rows) or "unlearning" (QA items)
    description: ClassVar[str] = ""
    every: ClassVar[int] = 0  # on_step cadence in tokens (0: never)

    # --- hooks (see obliviate.engine.generation) ---
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


def overrides(guard, hook: str) -> bool:
    """Whether `guard` implements `hook` (the decode loop and the server call only the hooks a guard overrides)."""
    return getattr(type(guard), hook, None) is not getattr(Guard, hook, None)


def attach(model, guards) -> None:
    """Make `guards` the model's default guards: every `generate` / `decode` call on it, and the teacher-forced
    passes of `evaluate` (prefill-time guards), apply them. This is how `--guard DIR` reaches the metrics and
    attacks, including those that train the weights (relearn, finetune): the guard stays on at generation."""
    model.obliviate_guards = list(guards)


def attached(model) -> list:
    return list(getattr(model, "obliviate_guards", None) or [])


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
        return any(isinstance(x, torch.nn.ModuleList) and len(x) == n_exp for x in m.modules()) or any(
            is_fused_experts(p, n_exp) for p in m.parameters()
        )

    out = []
    for i, ly in enumerate(decoder_layers(model)):
        for parent in ly.modules():
            kids = list(parent.children())
            hit = [
                m
                for m in kids
                if isinstance(getattr(m, "weight", None), torch.Tensor)
                and m.weight.dim() == 2
                and m.weight.shape[0] == n_exp
                and m.weight.shape[1] != n_exp
                and not isinstance(m, torch.nn.Embedding)
                and any(holds_experts(k) for k in kids if k is not m)
            ]
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
    raise UsageError(
        "expert steering supports routers that return their logits, or (logits, top-k weights, "
        f"top-k indices); this model's router returns {type(out).__name__} of "
        f"{len(out) if isinstance(out, (tuple, list)) else 1} value(s)"
    )


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
        raise UsageError(
            "expert steering supports softmax top-k routers; this model's router weights are not "
            "softmax -> top-k of its logits"
        )
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
            raise UsageError(
                f"guard {routed[0].name} steers experts, but this {type(model).__name__} has no "
                "mixture-of-experts routers"
            )
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
