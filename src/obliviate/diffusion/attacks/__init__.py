"""Attacks on concept erasure in text-to-image models (`obliviate audit --suite diffusion`), one file each,
registered by name.

An attack is a dataclass with `attacked_images(erased, original, prompt, target_images, sample) -> images`: the
erased model's generation for `prompt` once the attack has done its work (`target_images`: the original model's
images of the prompt, what the attack aims for; `sample`: a `diffusion.evaluate.SampleConfig`). An attack that
works per concept, not per prompt, sets `per_concept = True` and implements `attack(...)` instead (see
concept_arithmetic). The audit counts success with the target concept's classifier; an attack that judges its
candidates while it optimises (UnlearnDiffAtk, as its reference code does) sets `judged_during_attack = True` and
takes that classifier as `attacked_images(..., judge=)`.

To add an attack: create `diffusion/attacks/my_attack.py` with a `@DIFFUSION_ATTACKS.register("my_attack")` class.
"""

from __future__ import annotations

import importlib
import pkgutil

from obliviate.core.registry import Registry

DIFFUSION_ATTACKS: Registry[type] = Registry("diffusion attack")


def load_all() -> None:
    for m in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{m.name}")
