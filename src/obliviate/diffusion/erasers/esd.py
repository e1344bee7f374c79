"""ESD: Erased Stable Diffusion (Gandikota et al. 2023, "Erasing Concepts from Diffusion Models", ICCV 2023,
arXiv:2303.07345; reference code github.com/rohitgandikota/erasing, `esd_sd.py`).

Fine-tune the model so that, conditioned on the concept c, it predicts noise as if guided *away* from c (Eq. 3-4):

    target = eps*(x_t, "") - eta (eps*(x_t, c) - eps*(x_t, ""))        loss = || eps_theta(x_t, c) - target ||^2

eps* is the frozen original model. As in the reference code, x_t is reached by DDIM sampling with the model being
trained, conditioned on c at guidance `start_guidance`, stopped at a random step of `ddim_steps`; eps* is read at
that step's timestep. Which parameters train is the variant:

- `esd_x`: the cross-attention layers only (`attn2`: the text's way into the image; erases the concept as named
  while sparing the rest), the paper's choice for styles and named concepts;
- `esd_u`: every UNet parameter except cross-attention (unconditional erasure, for concepts that do not need to be
  named, such as nudity).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from obliviate.core.errors import UsageError
from obliviate.diffusion.erasers import ERASERS, Eraser


def esd_target(e_uncond: torch.Tensor, e_cond: torch.Tensor, eta: float) -> torch.Tensor:
    """eps*(x_t, "") - eta (eps*(x_t, c) - eps*(x_t, ""))."""
    return e_uncond - eta * (e_cond - e_uncond)


def trainable(unet, cross_attention: bool) -> list[torch.nn.Parameter]:
    """Cross-attention parameters (`attn2` modules, flagged `is_cross_attention`) or all the others."""
    cross = {id(p) for m in unet.modules() if getattr(m, "is_cross_attention", False) for p in m.parameters()}
    return [p for p in unet.parameters() if (id(p) in cross) == cross_attention]


@dataclass
class _ESD(Eraser):
    steps: int = 200
    lr: float = 1e-3
    eta: float = 1.0
    start_guidance: float = 3.0
    ddim_steps: int = 25
    batch_size: int = 8
    seed: int = 0
    cross_attention = True

    def __post_init__(self):
        if self.steps < 1 or self.lr <= 0 or self.ddim_steps < 2 or self.batch_size < 1:
            raise UsageError(f"{self.name}: steps >= 1, lr > 0, ddim_steps >= 2, batch_size >= 1")

    def erase(self, model, concept: str, *, guide: str = "", preserve: tuple[str, ...] = ()):
        from obliviate.core.progress import progress_bar

        frozen, edited = model, model.copy()
        params = trainable(edited.unet, self.cross_attention)
        for p in edited.unet.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=self.lr)
        g = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            c = frozen.encode([concept] * self.batch_size)
            u = frozen.encode([guide] * self.batch_size)
        self.history = []
        t0 = time.perf_counter()
        with progress_bar(self.steps, f"{self.name}: erasing {concept!r}", enabled=False) as bar:
            for _ in range(self.steps):
                sched = edited.ddim()
                sched.set_timesteps(self.ddim_steps)
                stop = int(torch.randint(0, self.ddim_steps - 1, (1,), generator=g))
                z = torch.randn(edited.latent_shape(self.batch_size), generator=g).to(edited.device)
                edited.unet.eval()
                with torch.no_grad():  # x_t: DDIM with the model being trained, guided towards c, stopped early
                    z = edited.denoise(z, u, c, self.start_guidance, sched, sched.timesteps[:stop])
                    t = sched.timesteps[stop]
                    e = frozen.eps(torch.cat([z, z]), t, torch.cat([u, c]))
                    target = esd_target(*e.chunk(2), self.eta)
                edited.unet.train()
                loss = torch.nn.functional.mse_loss(edited.eps(z, t, c), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                self.history.append(float(loss.detach()))
                bar.advance()
        edited.unet.eval()
        for p in edited.unet.parameters():
            p.requires_grad_(False)
        self.seconds = time.perf_counter() - t0
        return edited


@ERASERS.register("esd_x")
@dataclass
class ESDx(_ESD):
    name = "esd_x"
    description = "ESD, cross-attention only: eps(c) pushed to eps('') - eta (eps(c) - eps('')) (Gandikota et al. 2023)"
    cross_attention = True


@ERASERS.register("esd_u")
@dataclass
class ESDu(_ESD):
    name = "esd_u"
    description = "ESD, all but cross-attention (unconditional erasure) (Gandikota et al. 2023)"
    cross_attention = False
