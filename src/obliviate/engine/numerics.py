"""The training loop's numerics and machine settings: the learning-rate schedule, flushing denormals on a CPU, when
bf16 autocast pays, and activation checkpointing (`obliviate.engine.train` and DP-SGD's loop share them)."""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up then cosine decay to 10% of base (shape of TOFU's/OpenUnlearning's schedules)."""
    if step < warmup:
        return base * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


@contextmanager
def flush_denormal():
    """Flush denormal floats (|x| < 1.2e-38) to zero while training on a CPU, then switch it back off (torch's
    default). NPO's loss saturates after one step on a pretrained model, its gradients fall to 1e-17..1e-35,
    and CPU arithmetic on denormals takes a slow path: measured on SmolLM2-135M with full fine-tuning, NPO steps
    were 10x slower than GradAscent's, and 0.99x with this (bench/real_scale.py train --flush-denormal)."""
    changed = not torch.cuda.is_available() and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if changed:
            torch.set_flush_denormal(False)


def bf16_pays() -> bool:
    """Whether bf16 autocast speeds training up on this machine: a CUDA GPU that supports bf16, or a CPU with AMX
    (Intel's matrix units, which run bf16 matmuls natively). A SmolLM2-135M LoRA step of 16 world QA took 3.4-3.9 s
    against 5.1-5.7 s in fp32 on a 2-core CPU with AMX, and 4.65 s against 4.34 s on a 2-core CPU with AVX512-BF16
    but no AMX (`bench/bf16_steps.py --models real`; docs/benchmarks.md, dtype and bf16 autocast): the bf16 instructions alone do not pay."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.cpu.get_capabilities().get("amx_bf16"))
    except (AttributeError, RuntimeError):  # a torch without the query: assume not
        return False


def checkpointing(model, on: bool) -> None:
    """Switch transformers' activation checkpointing on (non-reentrant) or off. transformers 5.24 renamed
    `gradient_checkpointing_enable` / `_disable` to `activation_checkpointing_*` and warns on the old names."""
    kw = {"use_reentrant": False}
    renamed = hasattr(model, "activation_checkpointing_enable")
    if on and renamed:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
    elif renamed:
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()
