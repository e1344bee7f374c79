"""SalUn: saliency unlearning (Fan et al. 2024, "SalUn: Empowering Machine Unlearning via Gradient-based Weight
Saliency in Both Image Classification and Generation", ICLR 2024, arXiv:2310.12508; reference code
github.com/OPTML-Group/Unlearn-Saliency).

1. Weight saliency (Eq. 5): the gradient of the forgetting loss (the diffusion loss on the concept's images with
   its prompt) with respect to every UNet weight, accumulated over `saliency_batches` batches; the mask keeps the
   weights whose |gradient| is in the top `saliency_share` of all (the reference thresholds at the median, 0.5).
2. Unlearning with random labelling (Eq. 8, the generation form): only masked weights change, to minimise
   || eps_theta(x_t, c) - sg(eps_theta(x_t, c_random)) ||^2 on noisy concept images x_t (the concept's prompt c
   is made to predict what another prompt predicts on them: the prompt is relabelled; the reference code's
   `forget_out` against the detached `pseudo_out`, SD/train-scripts/random_label.py), plus `retain_weight` x the
   ordinary diffusion loss on retain prompts' images (the paper's beta-weighted retain term). `random` prompts
   are the `preserve` list, or the guide.
The concept's and retain images are the original model's generations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from obliviate.core.errors import UsageError
from obliviate.diffusion.erasers import ERASERS, Eraser


@ERASERS.register("salun")
@dataclass
class SalUn(Eraser):
    name = "salun"
    description = "gradient-saliency mask, then random-label updates on the masked weights (Fan et al. 2024)"
    needs_anchor: ClassVar[bool] = True  # erase() needs other prompts to relabel with: a guide or preserve words
    steps: int = 200
    lr: float = 1e-4
    saliency_share: float = 0.5
    saliency_batches: int = 4
    images: int = 16
    batch_size: int = 8
    retain_weight: float = 1.0
    guidance: float = 2.0
    ddim_steps: int = 25
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.saliency_share <= 1 or self.steps < 1 or self.images < 1:
            raise UsageError("salun: 0 < saliency_share <= 1, steps >= 1, images >= 1")

    def _loss(self, model, x0, idx, ctx, g):
        ddpm = model.ddpm()
        noise = torch.randn((len(idx), *x0.shape[1:]), generator=g)
        t = torch.randint(0, ddpm.config.num_train_timesteps, (len(idx),), generator=g)
        return torch.nn.functional.mse_loss(model.eps(ddpm.add_noise(x0[idx], noise, t), t, ctx), noise)

    def _relabel_loss(self, model, x0, idx, ctx, ctx_random, g):
        """|| eps(x_t, c) - sg(eps(x_t, c_random)) ||^2 on noisy images x0[idx] (Eq. 8)."""
        ddpm = model.ddpm()
        noise = torch.randn((len(idx), *x0.shape[1:]), generator=g)
        t = torch.randint(0, ddpm.config.num_train_timesteps, (len(idx),), generator=g)
        x_t = ddpm.add_noise(x0[idx], noise, t)
        with torch.no_grad():
            want = model.eps(x_t, t, ctx_random)
        return torch.nn.functional.mse_loss(model.eps(x_t, t, ctx), want)

    def saliency_mask(self, model, x0, ctx, g) -> dict:
        params = dict(model.unet.named_parameters())
        grads = {n: torch.zeros_like(p) for n, p in params.items()}
        for _ in range(self.saliency_batches):
            idx = torch.randint(0, len(x0), (self.batch_size,), generator=g)
            model.unet.zero_grad(set_to_none=True)
            self._loss(model, x0, idx, ctx, g).backward()
            for n, p in params.items():
                if p.grad is not None:
                    grads[n] += p.grad.abs()
        flat = torch.cat([v.flatten() for v in grads.values()])
        k = max(1, int(round(self.saliency_share * flat.numel())))
        thresh = flat.kthvalue(flat.numel() - k + 1).values
        return {n: (v >= thresh) for n, v in grads.items()}

    def erase(self, model, concept: str, *, guide: str = "", preserve: tuple[str, ...] = ()):
        others = list(preserve) or ([guide] if guide.strip() else [])
        if not others:
            raise UsageError("salun relabels the concept with other prompts: give --preserve WORD (or --guide)")
        frozen, edited = model, model.copy()
        g = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            x_f = frozen.to_model_space(
                frozen.sample([concept] * self.images, steps=self.ddim_steps, guidance=self.guidance, seed=self.seed)
            )
            x_r = {
                o: frozen.to_model_space(
                    frozen.sample([o] * self.images, steps=self.ddim_steps, guidance=self.guidance, seed=self.seed + 1)
                )
                for o in others
            }
            c_f = frozen.encode([concept] * self.batch_size)
            c_o = {o: frozen.encode([o] * self.batch_size) for o in others}
        for p in edited.text_encoder.parameters():
            p.requires_grad_(False)
        self.mask = self.saliency_mask(edited, x_f, c_f, g)
        params = dict(edited.unet.named_parameters())
        opt = torch.optim.Adam(params.values(), lr=self.lr)
        self.history, t0 = [], time.perf_counter()
        for step in range(self.steps):
            o = others[step % len(others)]
            idx = torch.randint(0, self.images, (self.batch_size,), generator=g)
            loss = self._relabel_loss(edited, x_f, idx, c_f, c_o[o], g)  # the concept's prompt, another's prediction
            if self.retain_weight > 0:
                loss = loss + self.retain_weight * self._loss(edited, x_r[o], idx, c_o[o], g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for n, p in params.items():
                if p.grad is not None:
                    p.grad *= self.mask[n]
            opt.step()
            self.history.append(float(loss.detach()))
        for p in edited.unet.parameters():
            p.requires_grad_(False)
        self.seconds = time.perf_counter() - t0
        return edited
