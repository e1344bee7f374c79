"""Guardians of Generation (Roy et al. 2025, "Guardians of Generation: Dynamic Inference-Time Copyright Shielding
with Adaptive Guidance for AI Image Generation", arXiv:2503.16171; reference code github.com/sohambuilds/
gogpipeline): a guard on the sampling loop that changes no weight.

1. Detect. The reference embeds the prompt (OpenAI `text-embedding-ada-002`), compares it with each protected
   concept's name and synonyms (cosine >= 0.8, `detection/detection_manager.py`), then asks gpt-4o-mini to
   confirm. Offline we have neither model: a prompt is flagged when it contains a protected concept's word (or a
   word of the user mapping), word by word. An attack that keeps the target prompt (UnlearnDiffAtk's and P4D's
   prefixes) cannot slip past it; a paraphrase without the word can, which the reference's LLM would catch.
2. Rewrite. The reference has gpt-4o-mini rewrite the prompt (`rewriting/rewrite_agent.py`); here the concept word
   is replaced by its nearest safe value: the user's mapping, else the world's look-alike table (the value most
   alike in appearance, e.g. star -> cross): the reference's instruction is a "generic, distinct alternative".
3. Guidance. The reference code (`Models/CFG.py`) mixes the text embeddings, not the noise predictions:
       c_mix = (1 - alpha) E(prompt) + alpha E(rewritten),   eps = eps_u + w (eps(x_t, c_mix) - eps_u)
   with one alpha at every step (`--mixing_wt`, default 0.5 in the code; 0.7 in the paper's figures, its reported
   optimum 0.65-0.75: our default is 0.7). The project page writes the mix on noise predictions instead; we follow
   the code. On top, and ours, not the reference's: `away` > 0 subtracts away * (eps(x_t, E(prompt)) - eps_u),
   guidance away from the flagged prompt (negative guidance, as in SLD); `away=0` is the reference's rule.

`GuardedT2I` wraps a model: `encode` returns c_mix for flagged prompts (so every path that encodes text, the
attacks' gradients included, meets the guard) and `sample` adds the away term. A context given to `sample`
directly (the embedding attack, which works below the text) is mixed like the prompt's own embedding when the
prompt that goes with it is flagged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from obliviate.core.errors import UsageError
from obliviate.diffusion.model import T2I


@dataclass
class GoG:
    alpha: float = 0.7  # weight of the rewritten prompt's embedding in the mix
    away: float = 0.0  # weight of the guidance away from the flagged prompt (ours; 0: the reference's rule)
    mapping: dict[str, str] = field(default_factory=dict)  # concept word -> its replacement (over the look-alikes)

    def __post_init__(self):
        if not 0 <= self.alpha <= 1 or self.away < 0:
            raise UsageError(f"gog: alpha in [0, 1] and away >= 0 (got alpha={self.alpha}, away={self.away})")

    def guard(self, model: T2I, concepts: list[str], world: dict | None = None) -> "GuardedT2I":
        """The model guarded against `concepts`; each replaced by `mapping[concept]`, else its nearest look-alike
        in `world` (UsageError when neither names one)."""
        from obliviate.diffusion.world import factor_of

        swaps = {}
        for c in concepts:
            if c in self.mapping:
                swaps[c] = self.mapping[c]
            elif world is not None:
                swaps[c] = world["factors"]["look_alikes"][factor_of(world, c)][c][0]
            else:
                raise UsageError(f"gog: no replacement for {c!r}: give an image world or a mapping {{{c!r}: WORD}}")
        return GuardedT2I(model, swaps, self.alpha, self.away)


class GuardedT2I(T2I):
    """A T2I sharing `model`'s components (no copy, no weight changed), guarded as the module docstring says."""

    def __init__(self, model: T2I, swaps: dict[str, str], alpha: float, away: float):
        super().__init__(
            model.unet, model.text_encoder, model.tokenizer, model.scheduler_config, model.vae, model.one_step_t
        )
        self.swaps, self.alpha, self.away = dict(swaps), alpha, away

    def flagged(self, prompt: str) -> str | None:
        """The protected concept the prompt names (its words all present, in order), else None."""
        words = prompt.lower().split()
        for c in self.swaps:
            cw = c.lower().split()
            if any(words[i : i + len(cw)] == cw for i in range(len(words) - len(cw) + 1)):
                return c
        return None

    def rewrite(self, prompt: str) -> str:
        c = self.flagged(prompt)
        if c is None:
            return prompt
        return re.sub(rf"(?<!\S){re.escape(c)}(?!\S)", self.swaps[c], prompt, flags=re.IGNORECASE)

    def raw_encode(self, prompts: list[str]) -> torch.Tensor:
        return T2I.encode(self, prompts)

    def mix(self, prompts: list[str], raw: torch.Tensor) -> torch.Tensor:
        """c_mix for the flagged prompts, `raw` for the others."""
        hit = [i for i, p in enumerate(prompts) if self.flagged(p)]
        if not hit:
            return raw
        safe = self.raw_encode([self.rewrite(prompts[i]) for i in hit])
        out = raw.clone()
        out[hit] = (1 - self.alpha) * raw[hit] + self.alpha * safe
        return out

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self.mix(prompts, self.raw_encode(prompts))

    @torch.no_grad()
    def sample(self, prompts, *, steps=25, guidance=2.0, seed=0, context=None, batch_size=64) -> torch.Tensor:
        if not self.away:
            cond = self.mix(prompts, context) if context is not None else None
            return super().sample(
                prompts, steps=steps, guidance=guidance, seed=seed, context=cond, batch_size=batch_size
            )
        out = []
        for s in range(0, len(prompts), batch_size):
            chunk = prompts[s : s + batch_size]
            raw = context[s : s + batch_size] if context is not None else self.raw_encode(chunk)
            cond, uncond = self.mix(chunk, raw), self.raw_encode([""] * len(chunk))
            mask = torch.tensor([self.flagged(p) is not None for p in chunk], dtype=raw.dtype).view(-1, 1, 1, 1)
            z = self.start_noise(len(chunk), seed, s)
            sched = self.ddim()
            sched.set_timesteps(steps)
            for t in sched.timesteps:
                e_u, e_c, e_f = self.eps(torch.cat([z, z, z]), t, torch.cat([uncond, cond, raw])).chunk(3)
                eps = e_u + guidance * (e_c - e_u) - self.away * mask.to(z.device) * (e_f - e_u)
                z = sched.step(eps, t, z).prev_sample
            out.append(self.to_pixels(z).cpu())
        return torch.cat(out)

    def copy(self) -> "GuardedT2I":
        return GuardedT2I(super().copy(), self.swaps, self.alpha, self.away)


def parse_guard(spec: str) -> GoG:
    """`gog` or `gog:MAPPING.json` ({concept: replacement}); UsageError naming the spec or the file otherwise."""
    from pathlib import Path

    from obliviate.data.schema import read_json

    name, _, path = spec.partition(":")
    if name != "gog":
        raise UsageError(f"--guard {spec!r}: the diffusion suite's guard is gog (or gog:MAPPING.json)")
    if not path:
        return GoG()
    doc = read_json(Path(path))
    if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
        raise UsageError(f"{path}: a guard mapping is a JSON object of concept -> replacement words")
    return GoG(mapping=doc)
