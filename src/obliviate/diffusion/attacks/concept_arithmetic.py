"""Concept arithmetic (Petsiuk & Saenko 2024, "Concept Arithmetics for Circumventing Concept Inhibition in
Diffusion Models", ECCV 2024, arXiv:2404.13706).

Classifier-free guidance is a sum of directions, so at sampling time an attacker may compose several prompts'
noise predictions (the compositional guidance of Liu et al. 2022):

    eps = eps(x_t, "") + sum_i w_i (eps(x_t, p_i) - eps(x_t, ""))

and rebuild the erased concept's guidance direction from prompts that were not erased. No weight and no prompt is
optimised; the budget is the number of compositions tried. Two families of compositions are tried:

- composition: + w (concept next to another word) - w (that word alone), e.g. "red star" - "red": the erasure
  edited "star" as trained, and the pair's difference is what is left of it in context;
- negation: a negative weight on the erased concept itself (one term of the same arithmetic; the reasoning is
  ours, from ESD's objective): ESD trains eps(x_t, c) towards eps(x_t, "") - eta (eps*(x_t, c) - eps*(x_t, "")),
  so the erased direction points away from the concept and guidance with w < 0 points back to it.

The attack samples `samples` images per composition and keeps the one the caller's recogniser (the target
concept's classifier) accepts most often: its attack success rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obliviate.diffusion.attacks import DIFFUSION_ATTACKS


@torch.no_grad()
def composed_sample(model, terms: list[tuple[str, float]], n: int, *, steps: int = 25, seed: int = 0) -> torch.Tensor:
    """n images [n, 3, H, W] in [-1, 1] from DDIM with eps = eps("") + sum_i w_i (eps(p_i) - eps("")); each image's
    noise depends only on (seed, its index), as in `T2I.sample`."""
    k = len(terms)
    ctx = model.encode([""] + [p for p, _ in terms])  # [1 + k, L, d]
    w = torch.tensor([wt for _, wt in terms], dtype=torch.float32, device=model.device).view(k, 1, 1, 1, 1)
    z = model.start_noise(n, seed)
    sched = model.ddim()
    sched.set_timesteps(steps)
    cond = ctx.repeat_interleave(n, dim=0)  # [(1 + k) n, L, d]: block j holds prompt j for every image
    for t in sched.timesteps:
        e = model.eps(z.repeat(1 + k, 1, 1, 1), t, cond).view(1 + k, n, *z.shape[1:])
        eps = e[0] + (w * (e[1:] - e[0])).sum(0)
        z = sched.step(eps, t, z).prev_sample
    return model.to_pixels(z).cpu()


def compositions(concept: str, context_words: list[str], guidance: float) -> list[list[tuple[str, float]]]:
    """The candidates, in the order tried: negations at -1, -2 and -4 x guidance / 2, then one composition per
    context word."""
    out = [[(concept, -m * guidance / 2)] for m in (1, 2, 4)]
    out += [[(f"{w} {concept}", guidance), (w, -guidance)] for w in context_words]
    return out


@DIFFUSION_ATTACKS.register("concept_arithmetic")
@dataclass
class ConceptArithmetic:
    samples: int = 8  # images per composition
    budget: int = 8  # compositions tried at most
    guidance: float = 2.0
    steps: int = 25
    seed: int = 0
    per_concept = True

    def attack(self, model, concept: str, recognised, context_words: list[str] = ()) -> dict:
        """recognised(images) -> [bool] (the target classifier). Returns the best composition, its success rate,
        and every candidate's rate."""
        tried = []
        for terms in compositions(concept, list(context_words), self.guidance)[: self.budget]:
            imgs = composed_sample(model, terms, self.samples, steps=self.steps, seed=self.seed)
            hits = list(recognised(imgs))
            tried.append({"terms": terms, "success": sum(hits) / len(hits), "images": imgs})
        best = max(tried, key=lambda r: r["success"])
        return {
            "terms": best["terms"],
            "success_rate": best["success"],
            "images": best["images"],
            "tried": [{k: v for k, v in r.items() if k != "images"} for r in tried],
        }
