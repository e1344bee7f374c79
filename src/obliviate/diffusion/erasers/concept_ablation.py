"""Concept Ablation (Kumari et al. 2023, "Ablating Concepts in Text-to-Image Diffusion Models", ICCV 2023,
arXiv:2303.13516; reference code github.com/nupurkmr9/concept-ablation).

Make the target concept's prompt behave like an anchor concept's (the `guide`, e.g. "circle" for "star", or a
broader concept). The "model-based" objective (Eq. 3 of the paper): on noisy versions x_t of anchor images (the
original model's generations for the anchor prompt),

    min  || eps_theta(x_t, c_target) - sg(eps*(x_t, c_anchor)) ||^2

with eps* the frozen original model. The reference's default fine-tunes the cross-attention key/value
projections (`attn2.to_k`, `attn2.to_v`), as here. `preserve` prompts add the same loss with the prompt as its own
anchor (the paper's regularisation on the anchor concept).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from obliviate.core.errors import UsageError
from obliviate.diffusion.erasers import ERASERS, Eraser, cross_attention_kv


@ERASERS.register("concept_ablation")
@dataclass
class ConceptAblation(Eraser):
    name = "concept_ablation"
    description = "target prompt's noise prediction matched to an anchor concept's (Kumari et al. 2023)"
    steps: int = 200
    lr: float = 1e-3
    anchor_images: int = 16
    batch_size: int = 8
    guidance: float = 2.0
    ddim_steps: int = 25
    seed: int = 0
    needs_anchor: ClassVar[bool] = True  # erase() needs a guide (the anchor concept)

    def __post_init__(self):
        if self.steps < 1 or self.anchor_images < 1 or self.batch_size < 1:
            raise UsageError("concept_ablation: steps, anchor_images and batch_size >= 1")

    def erase(self, model, concept: str, *, guide: str = "", preserve: tuple[str, ...] = ()):
        if not guide.strip():
            raise UsageError("concept_ablation needs an anchor concept: --guide WORD (what the concept should become)")
        frozen, edited = model, model.copy()
        for p in edited.unet.parameters():
            p.requires_grad_(False)
        params = [p for proj in cross_attention_kv(edited.unet) for p in proj.parameters()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=self.lr)
        g = torch.Generator().manual_seed(self.seed)
        anchors = [guide, *preserve]
        with torch.no_grad():  # anchor images, in model space, from the original model
            x0 = {
                a: frozen.to_model_space(
                    frozen.sample(
                        [a] * self.anchor_images, steps=self.ddim_steps, guidance=self.guidance, seed=self.seed
                    ).to(frozen.device)
                )
                for a in anchors
            }
            ctx = {a: frozen.encode([a] * self.batch_size) for a in anchors}
            c_target = frozen.encode([concept] * self.batch_size)
        ddpm = edited.ddpm()
        self.history, t0 = [], time.perf_counter()
        for step in range(self.steps):
            a = anchors[step % len(anchors)]
            idx = torch.randint(0, self.anchor_images, (self.batch_size,), generator=g)
            noise = torch.randn((self.batch_size, *x0[a].shape[1:]), generator=g)
            t = torch.randint(0, ddpm.config.num_train_timesteps, (self.batch_size,), generator=g)
            x_t = ddpm.add_noise(x0[a][idx], noise, t)
            with torch.no_grad():
                want = frozen.eps(x_t, t, ctx[a])
            cond = c_target if a == guide else ctx[a]  # preserve prompts: their own anchor
            loss = torch.nn.functional.mse_loss(edited.eps(x_t, t, cond), want)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.history.append(float(loss.detach()))
        for p in params:
            p.requires_grad_(False)
        self.seconds = time.perf_counter() - t0
        return edited
