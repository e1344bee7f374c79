"""Text-embedding perturbation: erased or removed content comes back from a small shift of the prompt's embedding
("Finding Dori", 2025, on memorised images; Pham et al. 2024, "Circumventing Concept Erasure Methods For
Text-to-Image Generative Models", ICLR 2024, learn a new input embedding for the erased concept).

A shift delta of the text encoder's output for the target prompt, the context [L, d] the UNet reads, is optimised
so that the erased model denoises the concept's images (the original model's generations) well:

    min_delta  E || eps_erased(x_t, ctx(prompt) + delta) - eps ||^2     subject to ||delta||_2 <= radius x ||ctx||_2

(projected gradient descent). The attacked images are then sampled from `ctx + delta` (`T2I.sample(context=)`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obliviate.diffusion.attacks import DIFFUSION_ATTACKS, Finding


@DIFFUSION_ATTACKS.register("embedding_shift")
@dataclass
class EmbeddingShift:
    steps: int = 40
    lr: float = 0.05
    radius: float = 0.2  # ||delta|| at most this share of the context's norm
    samples: int = 8
    seed: int = 0

    def attack(self, erased, prompt: str, target_images: torch.Tensor) -> dict:
        g = torch.Generator().manual_seed(self.seed)
        for p in list(erased.unet.parameters()) + list(erased.text_encoder.parameters()):
            p.requires_grad_(False)
        with torch.no_grad():
            x0 = erased.to_model_space(target_images.to(erased.device))
            ctx = erased.encode([prompt])  # [1, L, d]
        bound = self.radius * float(ctx.norm())
        delta = torch.zeros_like(ctx, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=self.lr)
        ddpm, T, history = erased.ddpm(), erased.ddpm().config.num_train_timesteps, []
        for _ in range(self.steps):
            idx = torch.randint(0, len(x0), (self.samples,), generator=g)
            t = torch.randint(0, T, (self.samples,), generator=g)
            noise = torch.randn((self.samples, *x0.shape[1:]), generator=g)
            loss = torch.nn.functional.mse_loss(
                erased.eps(ddpm.add_noise(x0[idx], noise, t), t, (ctx + delta).expand(self.samples, -1, -1)), noise
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():  # project onto the ball
                n = delta.norm()
                if n > bound:
                    delta.mul_(bound / n)
            history.append(float(loss.detach()))
        return {
            "context": (ctx + delta).detach(),
            "delta_norm": float(delta.detach().norm()),
            "bound": bound,
            "history": history,
        }

    def find(self, erased, original, prompt: str, target_images: torch.Tensor, sample) -> Finding:
        ctx = self.attack(erased, prompt, target_images)["context"]
        images = erased.sample([prompt], context=ctx, steps=sample.steps, guidance=sample.guidance, seed=sample.seed)
        return Finding(images=images, context=ctx)
