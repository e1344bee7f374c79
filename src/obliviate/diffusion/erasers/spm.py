"""SPM: concept Semi-Permeable Membrane (Lyu et al. 2024, "One-dimensional Adapter to Rule Them All: Concepts,
Diffusion Models and Erasing Applications", CVPR 2024, arXiv:2312.16145; reference code
github.com/Con6924/SPM, `train_spm.py`, `PromptEmbedsPair._erase_with_la`).

A rank-1 adapter ("one-dimensional", W + (alpha / r) B A with r = 1, A [1, in], B [out, 1], B = 0 at start) on
every linear layer of the UNet's attention blocks; the base weights stay frozen, so the adapter can be shipped,
removed or stacked. It trains on two losses (Eq. 5-6 of the paper, `erase_with_la` in the reference):

- erasure, ESD's target with the adapter on: on x_t from DDIM with the adapted model guided towards c,
      L_erase = || eps_spm(x_t, c) - [eps*(x_t, n) - g (eps*(x_t, c) - eps*(x_t, n))] ||^2
  (n the neutral prompt, "" by default; g the reference's `guidance_scale`, 1.0);
- latent anchoring: random text embeddings a, drawn as the reference draws them (Gaussian directions accepted with
  probability 1 - cos(a, c), scaled to ||c|| x U(0.8, 1.2)), must keep the original prediction:
      L_anchor = || eps_spm(x_t, a) - eps*(x_t, a) ||^2,      L = L_erase + la_strength L_anchor
  (la_strength 1000 in the reference).

Preserve prompts join the anchors as real embeddings. The adapters are merged into the saved weights (so the saved
directory is an ordinary model); the reference's inference-time "facilitated transport" (scaling each adapter
by the prompt's similarity to the concept) is not part of this eraser.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from obliviate.core.errors import UsageError
from obliviate.diffusion.erasers import ERASERS, Eraser
from obliviate.diffusion.erasers.esd import esd_target


class RankOneAdapter(torch.nn.Module):
    """y = base(x) + scale * (x A^T) B^T with A [1, in], B [out, 1]; B starts at 0 (the adapter starts as a no-op)."""

    def __init__(self, base: torch.nn.Linear, alpha: float = 1.0, seed: int = 0):
        super().__init__()
        self.base, self.scale = base, alpha
        g = torch.Generator().manual_seed(seed)
        self.A = torch.nn.Parameter(torch.randn(1, base.in_features, generator=g) / base.in_features**0.5)
        self.B = torch.nn.Parameter(torch.zeros(base.out_features, 1))

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.A.T) @ self.B.T

    def merged(self) -> torch.nn.Linear:
        with torch.no_grad():
            self.base.weight += self.scale * (self.B @ self.A).to(self.base.weight.dtype)
        return self.base


def attention_linears(unet) -> list[tuple[torch.nn.Module, str]]:
    """(parent, attribute) of every nn.Linear inside the UNet's attention modules (q, k, v, out projections)."""
    out = []
    for m in unet.modules():
        if hasattr(m, "to_q") and hasattr(m, "to_k"):
            for name in ("to_q", "to_k", "to_v"):
                if isinstance(getattr(m, name), torch.nn.Linear):
                    out.append((m, name))
            if isinstance(getattr(m, "to_out", None), torch.nn.ModuleList) and isinstance(m.to_out[0], torch.nn.Linear):
                out.append((m.to_out, "0"))
    return out


def anchor_embeddings(target: torch.Tensor, n: int, rng: random.Random, g: torch.Generator) -> torch.Tensor:
    """n random embeddings shaped like target [L, d]: a Gaussian direction kept with probability 1 - cos(it, target),
    scaled to ||target|| x U(0.8, 1.2) (the reference's `sample`)."""
    out, flat = [], target.reshape(-1)
    while len(out) < n:
        z = torch.randn(flat.shape, generator=g, dtype=flat.dtype)
        z = z / z.norm()
        if rng.random() < 1 - float(torch.nn.functional.cosine_similarity(flat, z, dim=0)):
            out.append((rng.uniform(0.8, 1.2) * flat.norm() * z).reshape(target.shape))
    return torch.stack(out)


@ERASERS.register("spm")
@dataclass
class SPM(Eraser):
    name = "spm"
    description = "rank-1 adapters on the attention layers, ESD erasure + latent anchoring (Lyu et al. 2024)"
    steps: int = 200
    lr: float = 1e-3
    guidance_scale: float = 1.0  # g of the erasure target
    start_guidance: float = 3.0  # guidance of the DDIM run that reaches x_t
    la_strength: float = 1000.0
    anchors: int = 4
    batch_size: int = 4
    ddim_steps: int = 25
    seed: int = 0

    def __post_init__(self):
        # ddim_steps >= 3: each step stops the DDIM walk at a step drawn from [1, ddim_steps - 1)
        if self.steps < 1 or self.lr <= 0 or self.anchors < 0 or self.batch_size < 1 or self.ddim_steps < 3:
            raise UsageError("spm: steps, batch_size >= 1, anchors >= 0, ddim_steps >= 3, lr > 0")

    def erase(self, model, concept: str, *, guide: str = "", preserve: tuple[str, ...] = ()):
        frozen, edited = model, model.copy()
        for p in edited.unet.parameters():
            p.requires_grad_(False)
        adapters = []
        for i, (parent, attr) in enumerate(attention_linears(edited.unet)):
            a = RankOneAdapter(getattr(parent, attr), seed=self.seed * 7919 + i).to(edited.device)
            setattr(parent, attr, a) if attr != "0" else parent.__setitem__(0, a)
            adapters.append((parent, attr, a))
        params = [p for _, _, a in adapters for p in (a.A, a.B)]
        opt = torch.optim.Adam(params, lr=self.lr)
        g, rng = torch.Generator().manual_seed(self.seed), random.Random(self.seed)
        B = self.batch_size
        with torch.no_grad():
            c, n = frozen.encode([concept] * B), frozen.encode([guide] * B)
            kept = frozen.encode(list(preserve)) if preserve else None
        self.history, t0 = [], time.perf_counter()
        for _ in range(self.steps):
            sched = edited.ddim()
            sched.set_timesteps(self.ddim_steps)
            stop = int(torch.randint(1, self.ddim_steps - 1, (1,), generator=g))
            z = torch.randn(edited.latent_shape(B), generator=g).to(edited.device)
            with torch.no_grad():
                z = edited.denoise(z, n, c, self.start_guidance, sched, sched.timesteps[:stop])
                t = sched.timesteps[stop]
                target = esd_target(*frozen.eps(torch.cat([z, z]), t, torch.cat([n, c])).chunk(2), self.guidance_scale)
            loss_erase = torch.nn.functional.mse_loss(edited.eps(z, t, c), target)
            loss = loss_erase
            if self.anchors or kept is not None:
                anc = [anchor_embeddings(c[0], self.anchors, rng, g)] if self.anchors else []
                anc = torch.cat(anc + ([kept] if kept is not None else []))
                za = z[torch.randint(0, B, (len(anc),), generator=g)]
                with torch.no_grad():
                    want = frozen.eps(za, t, anc)
                loss = loss + self.la_strength * torch.nn.functional.mse_loss(edited.eps(za, t, anc), want)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.history.append(float(loss.detach()))
        for parent, attr, a in adapters:  # merge: the saved model is an ordinary UNet
            base = a.merged()
            setattr(parent, attr, base) if attr != "0" else parent.__setitem__(0, base)
        self.seconds = time.perf_counter() - t0
        return edited
