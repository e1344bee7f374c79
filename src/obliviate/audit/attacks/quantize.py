"""Quantisation attack: does rounding the unlearned weights to 8 or 4 bits bring the forgotten facts back?

Zhang et al. 2025, "Catastrophic Failure of LLM Unlearning via Quantization" (ICLR 2025; arXiv:2410.16454, first
titled "Does your LLM truly unlearn? An embarrassingly simple approach to recover unlearned knowledge"). Their
argument: unlearning with a small learning rate and a utility constraint moves the weights so little that
quantisation maps the unlearned and the original weights onto the same grid points, so the quantised unlearned
model behaves like the quantised *target* again (they report 21% of the forgotten knowledge kept at full precision
and 83% after 4-bit quantisation, for methods with utility constraints). A model that never learned the facts
(the oracle) has nothing to bring back.

What we do is simulated ("fake") round-to-nearest quantisation, the RTN baseline of the paper, done in torch on
the CPU without bitsandbytes or a GPU: every `nn.Linear` weight W (lm_head included) is replaced by its
dequantised RTN value, symmetric per output channel (per row of W); on a mixture of experts, every fused expert
tensor [E, ., .] too, per expert and output channel (`models.anatomy.fused_expert_input_axes` finds the axis each
one reads along, by the write-axis test of weight orthogonalisation):

    s_i = max_j |W_ij| / (2^(b-1) - 1),    Q(W)_ij = s_i * clamp(round(W_ij / s_i), -(2^(b-1) - 1), 2^(b-1) - 1)

so |W - Q(W)| <= s_i / 2 element-wise. Embeddings, norms and biases stay in float, as in weight-only
quantisation. The paper's AWQ/GPTQ runs use calibration data and groups of 128; RTN per channel is the plainer,
usually harsher variant. The weights are restored after each precision, so the model is left as it came.

Figures, per precision p in {fp32, int8, int4, ...} (budget: `bits`, e.g. "8,4"): on the forget items,
`p_rouge` / `p_value_rouge` / `p_value_acc` (see `recall_figures`); on retained people `p_retain_value_acc`, which
tells "knowledge came back" apart from "the quantised model is broken" (so the audit skips the attack when the
data has no retained items); `recovered_value_acc_int{b}` is int{b} - fp32 on the forget items.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from obliviate.audit.attacks import ATTACKS, Attack, AuditContext, recall_figures, rouge_on
from obliviate.core.errors import UsageError


def fake_quantize(w: torch.Tensor, bits: int, in_axis: int = -1) -> torch.Tensor:
    """Symmetric round-to-nearest quantisation per output channel, returned dequantised (float): one scale per
    slice along `in_axis`, the axis the weight reads along. A Linear weight [out, in] reads along its last axis
    (one scale per row); a fused expert tensor [E, ., .] has one scale per expert and output channel."""
    if w.dim() not in (2, 3):
        raise ValueError("fake_quantize expects a 2-D weight [out, in] or fused experts [E, ., .]")
    qmax = 2 ** (bits - 1) - 1
    w32 = w.detach().float()
    scale = w32.abs().amax(dim=in_axis, keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
    return ((w32 / scale).round().clamp(-qmax, qmax) * scale).to(w.dtype)


@torch.no_grad()
def quantize_linears(model, bits: int) -> dict[str, torch.Tensor]:
    """Fake-quantise in place every nn.Linear weight of `model` and every fused expert tensor of a mixture of
    experts (transformers 5 keeps a MoE's experts as [E, ., .] parameters, not Linears: without them a MoE's
    experts would stay at full precision). Returns the original tensors by parameter name, for `restore`."""
    from obliviate.models.anatomy import fused_expert_input_axes

    saved = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            key = f"{name}.weight" if name else "weight"
            saved[key] = mod.weight.detach().clone()
            mod.weight.copy_(fake_quantize(mod.weight, bits))
    for name, p, in_axis in fused_expert_input_axes(model):
        if in_axis is not None:
            saved[name] = p.detach().clone()
            p.copy_(fake_quantize(p, bits, in_axis))
    return saved


@torch.no_grad()
def restore(model, saved: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, w in saved.items():
        params[name].copy_(w)


def parse_bits(bits) -> tuple[int, ...]:
    """ "8,4", [8, 4], (8, 4) or "[8, 4]" -> (8, 4); each in 2..16."""
    vals = tuple(int(b) for b in re.findall(r"-?\d+", str(bits)))
    if not vals or any(not 2 <= b <= 16 for b in vals):
        raise UsageError(f"quantize: bits must list bit widths in 2..16, e.g. '8,4' (got {bits!r})")
    return tuple(dict.fromkeys(vals))


@ATTACKS.register("quantize")
@dataclass
class Quantize(Attack):
    bits: str = "8,4"  # a comma list; a list or tuple of ints works from Python too
    description = "round the weights to 8/4 bits (simulated RTN); forgotten facts coming back"

    def __post_init__(self):
        self.bits = ",".join(str(b) for b in parse_bits(self.bits))

    def missing(self, ctx: AuditContext) -> str | None:
        if not ctx.retain_items():
            return "needs retained items (--retain FILE) to tell a broken quantised model from a forgetful one"
        return None

    def run(self, ctx: AuditContext, model, tok) -> dict:
        forget, retain = ctx.forget_items()[: ctx.limit], ctx.retain_items()[: ctx.limit]
        out: dict[str, float | None] = {}
        precisions = [("fp32", None)] + [(f"int{b}", b) for b in parse_bits(self.bits)]
        for label, b in precisions:
            saved = quantize_linears(model, b) if b else {}
            try:
                _, outs = rouge_on(model, tok, forget, ctx.max_new_tokens)
                out.update(recall_figures(forget, outs, label))
                _, outs = rouge_on(model, tok, retain, ctx.max_new_tokens)
                out[f"{label}_retain_value_acc"] = recall_figures(retain, outs, "r")["r_value_acc"]
            finally:
                restore(model, saved)
        for label, _b in precisions[1:]:
            out[f"recovered_value_acc_{label}"] = out[f"{label}_value_acc"] - out["fp32_value_acc"]
        return out
