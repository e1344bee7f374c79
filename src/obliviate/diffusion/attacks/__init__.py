"""Attacks on concept erasure in text-to-image models (`obliviate audit --suite diffusion`), one file each,
registered by name.

An attack is a dataclass with `find(erased, original, prompt, target_images, sample) -> Finding`: what the attack
found for `prompt` (an adversarial prompt or a text-embedding context) and the erased model's generation with it
(`target_images`: the original model's images of the prompt, what the attack aims for; `sample`: a
`diffusion.evaluate.SampleConfig`). An attack that works per concept, not per prompt, sets `per_concept = True`
and implements `attack(...)` instead (see concept_arithmetic). The audit counts success with the target concept's
classifier; an attack that judges its candidates while it optimises (UnlearnDiffAtk, as its reference code does)
sets `judged_during_attack = True` and takes that classifier as `find(..., judge=)`. The audit keeps every finding
with its image (`diffusion.findings`), so that `audit --replay` can run it on another model.

To add an attack: create `diffusion/attacks/my_attack.py` with a `@DIFFUSION_ATTACKS.register("my_attack")` class.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass

import torch

from obliviate.core.registry import Registry

DIFFUSION_ATTACKS: Registry[type] = Registry("diffusion attack")


@dataclass
class Finding:
    """What a per-prompt attack found: `images` [1, 3, H, W] in [-1, 1], the erased model's generation with it, and
    either `prompt` (a discrete adversarial prompt: it transfers to any model with the same vocabulary) or
    `context` [1, L, d] (a text-embedding context: it transfers to a model whose text encoder has the same width)."""

    images: torch.Tensor
    prompt: str | None = None
    context: torch.Tensor | None = None


def load_all() -> None:
    for m in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{m.name}")
