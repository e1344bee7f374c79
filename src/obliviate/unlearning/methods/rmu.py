"""Representation Misdirection for Unlearning (RMU).

Li et al. 2024, "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning", sec. 5, eq. 1-3:
    L_forget = mean_t || h_theta^l(x_forget)_t - c * u ||^2        (u: a fixed random unit vector)
    L_retain = mean_t || h_theta^l(x_retain)_t - h_frozen^l(x_retain)_t ||^2
    L = L_forget + alpha * L_retain
h^l is the residual stream after decoder layer l, read through `output_hidden_states`, so any HF decoder works.
As in the authors' code, u is drawn from U[0, 1)^d and normalised, the squared error is averaged over the
hidden dimension (torch's mse_loss), and all non-padding positions count. The retain term needs the frozen
model's activations on arbitrary retain batches, so RMU keeps a frozen copy (a live reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from obliviate.core.errors import UsageError
from obliviate.engine.method import Method
from obliviate.models.encode import last_logits_only
from obliviate.unlearning.methods import METHODS


def rmu_loss(h_forget, control, h_retain, h_retain_frozen, forget_mask, retain_mask, alpha: float):
    """h_* [B, T, d]; control [d] (= c * u); masks [B, T] (1 = real token). Returns the scalar RMU loss."""
    f = ((h_forget - control) ** 2).mean(-1)  # [B, T]
    r = ((h_retain - h_retain_frozen) ** 2).mean(-1)  # [B, T]
    f = (f * forget_mask).sum() / forget_mask.sum().clamp(min=1)
    r = (r * retain_mask).sum() / retain_mask.sum().clamp(min=1)
    return f + alpha * r


def hidden_at(model, part: dict, layer: int) -> torch.Tensor:
    # the loss reads hidden states only: the logits of one position are the least the model will compute
    out = model(
        input_ids=part["input_ids"],
        attention_mask=part["attention_mask"],
        output_hidden_states=True,
        **last_logits_only(model),
    )
    states = out.hidden_states  # (embeddings, layer 0 output, layer 1 output, ...)
    if not -len(states) + 1 <= layer < len(states) - 1:
        raise UsageError(f"rmu: layer {layer} out of range for a model with {len(states) - 1} layers")
    return states[layer + 1 if layer >= 0 else layer]


@METHODS.register("rmu")
@dataclass
class RMU(Method):
    lr: float = 1e-3  # tuned on the world (forget10, with c = 20): FQ 0.58 at 0.94x target utility
    steps: int = 100
    layer: int = -2  # decoder layer whose output is steered (negative counts from the top)
    steering_coeff: float = 20.0  # c
    retain_weight: float = 100.0  # alpha; the WMDP code uses 1200 for zephyr-7b at layer 7
    seed: int = 0

    live_reference: ClassVar[bool] = True

    def loss(self, model, batch, ref_model=None):
        f, r = batch["forget"], batch["retain"]
        h_f = hidden_at(model, f, self.layer)
        if not hasattr(self, "_control") or self._control.shape[-1] != h_f.shape[-1]:
            g = torch.Generator().manual_seed(self.seed)
            u = torch.rand(h_f.shape[-1], generator=g)
            self._control = self.steering_coeff * u / u.norm()
        h_r = hidden_at(model, r, self.layer)
        with torch.no_grad():
            h_r0 = hidden_at(ref_model, r, self.layer)
        loss = rmu_loss(
            h_f.float(),
            self._control.to(h_f.device),
            h_r.float(),
            h_r0.float(),
            f["attention_mask"].float(),
            r["attention_mask"].float(),
            self.retain_weight,
        )
        return loss, {"rmu": loss.item()}
