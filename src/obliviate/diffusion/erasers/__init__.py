"""Concept erasers for text-to-image diffusion models, one file each, registered by name (`obliviate ls
erasers`). An eraser is a dataclass whose `erase(model, concept, guide=..., preserve=...)` returns the edited
`obliviate.diffusion.model.T2I` (a copy: the input model is left as it was); `erase_many(model, concepts, ...)`
erases several (by default one after another; UCE in one closed form).

To add an eraser: create `diffusion/erasers/my_eraser.py` with a `@ERASERS.register("my_eraser")` dataclass.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import ClassVar

from obliviate.core.registry import Registry

ERASERS: Registry[type["Eraser"]] = Registry("eraser")


@dataclass
class Eraser:
    name: ClassVar[str] = "eraser"
    description: ClassVar[str] = ""

    def erase(self, model, concept: str, *, guide: str = "", preserve: tuple[str, ...] = ()):
        raise NotImplementedError

    def erase_many(self, model, concepts: list[str], *, guide: str = "", preserve: tuple[str, ...] = ()):
        """Several concepts: one after another, each erased from the model the previous one left. An eraser whose
        paper defines a joint edit overrides this (UCE)."""
        for c in concepts:
            model = self.erase(model, c, guide=guide, preserve=preserve)
        return model

    @classmethod
    def from_options(cls, options: dict) -> "Eraser":
        from obliviate.core.options import cast_options

        return cls(**cast_options(cls, options, f"eraser {cls.name}"))


def load_all() -> None:
    for m in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{m.name}")


def cross_attention_kv(unet) -> list:
    """The key and value projections of every cross-attention layer of a diffusers UNet (`attn2.to_k/to_v`: the
    maps from text embeddings into the image's attention), found by the Attention modules' own flag."""
    out = []
    for m in unet.modules():
        if getattr(m, "is_cross_attention", False) and hasattr(m, "to_k") and hasattr(m, "to_v"):
            out += [m.to_k, m.to_v]
    return out
