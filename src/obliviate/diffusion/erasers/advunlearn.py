"""AdvUnlearn (Zhang et al. 2024, "Defensive Unlearning with Adversarial Training for Robust Concept Erasure in
Diffusion Models", NeurIPS 2024, arXiv:2405.15234; reference code github.com/OPTML-Group/AdvUnlearn).

Adversarial training of the text encoder (the paper finds the text encoder, not the UNet, the module to robustify):

- inner step (the attack, the reference's fast variant): `k` prefix token embeddings before the concept prompt,
  started from random vocabulary rows and moved `attack_steps` times by signed gradient steps of size
  `attack_lr` to *lower* the erased model's denoising loss on images of the concept (UnlearnDiffAtk's objective,
  in embedding space);
- outer step: the ESD loss (see `esd.py`) for the prompt "prefix + concept", plus a utility-retaining term:
  `retain_weight` x || eps_theta(x_t, r) - eps*(x_t, r) ||^2 on retain prompts r (the reference's
  regulariser on a retain prompt set), updating the text encoder only.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from obliviate.core.errors import UsageError
from obliviate.diffusion.attacks.unlearndiffatk import prefix_embeddings, prefixed
from obliviate.diffusion.erasers import ERASERS, Eraser
from obliviate.diffusion.erasers.esd import esd_target


@ERASERS.register("advunlearn")
@dataclass
class AdvUnlearn(Eraser):
    name = "advunlearn"
    description = "ESD on the text encoder against an inner prefix attack, with a retain term (Zhang et al. 2024)"
    steps: int = 100
    lr: float = 1e-4
    eta: float = 1.0
    start_guidance: float = 3.0
    ddim_steps: int = 25
    batch_size: int = 4
    prefix_tokens: int = 3
    attack_steps: int = 2
    attack_lr: float = 0.05
    retain_weight: float = 0.3
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.prefix_tokens < 1 or self.attack_steps < 0 or self.ddim_steps < 2:
            raise UsageError("advunlearn: steps >= 1, prefix_tokens >= 1, attack_steps >= 0, ddim_steps >= 2")

    def erase(self, model, concept: str, *, guide: str = "", preserve: tuple[str, ...] = ()):
        frozen, edited = model, model.copy()
        for p in edited.unet.parameters():
            p.requires_grad_(False)
        params = list(edited.text_encoder.parameters())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=self.lr)
        g = torch.Generator().manual_seed(self.seed)
        rng = random.Random(self.seed)
        retain = list(preserve) or [guide]
        table = edited.text_encoder.get_input_embeddings().weight
        adv_text = prefixed(edited.tokenizer, concept, self.prefix_tokens)
        self.history, t0 = [], time.perf_counter()
        B = self.batch_size
        with torch.no_grad():
            u = frozen.encode([guide] * B)
        for _ in range(self.steps):
            # x_t by DDIM with the model being trained, towards the concept, stopped at a random step (as ESD)
            sched = edited.ddim()
            sched.set_timesteps(self.ddim_steps)
            stop = int(torch.randint(0, self.ddim_steps - 1, (1,), generator=g))
            z = torch.randn(edited.latent_shape(B), generator=g).to(edited.device)
            with torch.no_grad():
                z = edited.denoise(
                    z, u, edited.encode([concept] * B), self.start_guidance, sched, sched.timesteps[:stop]
                )
                t = sched.timesteps[stop]
                e_u, e_c = frozen.eps(torch.cat([z, z]), t, torch.cat([u, frozen.encode([concept] * B)])).chunk(2)
                target = esd_target(e_u, e_c, self.eta)
                # the attack's objective: the erased model's noise prediction for the concept's images, which
                # the original model's conditional prediction stands for here
                want = e_c
            # inner: a prefix that brings the concept back (lower loss to the original conditional prediction)
            rows = torch.tensor([rng.randrange(table.shape[0]) for _ in range(self.prefix_tokens)])
            delta = table[rows].detach().clone().requires_grad_(True)
            for _ in range(self.attack_steps):
                with prefix_embeddings(edited, delta):
                    ctx = edited.encode([adv_text] * B)
                loss_a = torch.nn.functional.mse_loss(edited.eps(z, t, ctx), want)
                (grad,) = torch.autograd.grad(loss_a, delta)
                delta = (delta - self.attack_lr * grad.sign()).detach().requires_grad_(True)
            # outer: ESD on the attacked prompt + the retain term, text encoder only
            with prefix_embeddings(edited, delta.detach()):
                ctx = edited.encode([adv_text] * B)
            loss = torch.nn.functional.mse_loss(edited.eps(z, t, ctx), target)
            if self.retain_weight > 0:
                r = [rng.choice(retain) for _ in range(B)]
                with torch.no_grad():
                    e_r = frozen.eps(z, t, frozen.encode(r))
                loss = loss + self.retain_weight * torch.nn.functional.mse_loss(edited.eps(z, t, edited.encode(r)), e_r)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.history.append(float(loss.detach()))
        for p in params:
            p.requires_grad_(False)
        edited.text_encoder.eval()
        self.seconds = time.perf_counter() - t0
        return edited
