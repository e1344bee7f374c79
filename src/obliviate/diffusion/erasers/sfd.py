"""Score Forgetting Distillation (Chen, Zhang & Zhou 2025, "Score Forgetting Distillation: A Swift, Data-Free
Method for Machine Unlearning in Diffusion Models", ICLR 2025, arXiv:2409.11219; reference code
github.com/tqch/score-forgetting-distillation, `DDPM/functions/losses.py`, `DDPM/runners/diffusion.py::train_sfd`).

Distil the model into a one-step generator G while aligning the forgotten concept's conditional score with a safe
concept's. Three copies of the UNet: the teacher eps_phi (frozen), a fake score eps_psi and the generator G_theta
(both start from the teacher). G maps noise at one timestep t_init straight to an image (`T2I.one_step`). With
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) e, t ~ U[t_min, t_max), and x_hat(eps) = (x_t - sqrt(1 - abar_t) eps) /
sqrt(abar_t), each iteration takes, in the reference's order:

1. a fake-score step (`sid_sg_loss_conditional`): || e - eps_psi(x_t, t, c) ||^2 on G's own samples (detached),
   for remaining prompts c plus `forget_weight` x the same for forget prompts c_f;
2. a generator step, SiD's loss (Zhou et al. 2024, "Score identity Distillation", ICML; `sid_g_loss_conditional`):
   with p = x_hat(eps_phi(x_t; c_p)), f = x_hat(eps_psi(x_t; c_g)), omega = mean |p - x0| (no gradient):
       L = sum_pixels (p - f) . ((p - x0) - alpha (p - f)) / omega
   for the remaining prompts (c_p = c_g = c) plus `forget_weight` x the forget term, where x0 = G(c_f), the fake
   score reads c_f and the teacher reads the override c_o: the concept's score is pulled towards the safe concept's.

Data-free: no image enters any loss; both networks learn from G's samples and the teacher's score only (the test
checks that no world image is read). Scaled to the image world: the forget prompts are the given prompts naming the
guide (the safe concept: the demo's nearest look-alike) with the guide swapped for the concept, their overrides the
prompts as given, and the remaining prompts the rest (the reference's SD setting: a forget prompt file and its regex
override, "brad pitt" -> "a middle aged man", and remaining captions). Both scores read classifier-free guidance at
`guidance` (the reference's SD config: 4.5 on both; our default is the demo's sampling guidance, 3), with 10% of
the fake score's prompts dropped to "" so that it learns the unconditional score too. The reference's CIFAR-10
config: alpha 1.2, t_init 440, t in [38, 712), Adam (beta1 0) at 1e-5 for both networks, forget weights 0.01, 50k
iterations at batch 128; ours: the same alpha, t_init and t range, forget weight 1 (its SD config), and few hundred
iterations at a larger learning rate.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from obliviate.core.errors import UsageError
from obliviate.diffusion.erasers import ERASERS, Eraser


def sid_generator_loss(p: torch.Tensor, f: torch.Tensor, x0: torch.Tensor, alpha: float) -> torch.Tensor:
    """SiD's generator loss per sample, summed over pixels and averaged over the batch (module docstring)."""
    omega = (p - x0).abs().mean(dim=tuple(range(1, x0.dim())), keepdim=True).detach().clamp_min(1e-5)
    return ((p - f) * ((p - x0) - alpha * (p - f)) / omega).sum(dim=tuple(range(1, x0.dim()))).mean()


@ERASERS.register("sfd")
@dataclass
class SFD(Eraser):
    name = "sfd"
    description = "Score Forgetting Distillation: a data-free one-step generator that forgets (Chen et al. 2025)"
    needs_anchor = True  # the safe concept the forgotten one is aligned with (the demo: its nearest look-alike)
    retain_prompts = True  # the demo passes the world's prompts (text only) that do not name the concept
    steps: int = 300
    lr: float = 1e-4  # generator
    lr_fake: float = 1e-4
    alpha: float = 1.2
    t_init: int = 440
    t_min: int = 38
    t_max: int = 712
    forget_weight: float = 1.0
    guidance: float = 3.0
    batch_size: int = 16  # remaining prompts per step (and as many forget prompts)
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or not 0 <= self.t_min < self.t_max <= 1000 or not 0 <= self.t_init < 1000:
            raise UsageError("sfd: steps >= 1, 0 <= t_min < t_max <= 1000, 0 <= t_init < 1000")

    def prompts(self, concept: str, guide: str, preserve) -> tuple[list[str], list[str], list[str]]:
        """(forget prompts, their overrides, remaining prompts), module docstring."""
        given = [p for p in preserve if p.strip() and concept not in p.split()]
        overrides = [p for p in given if guide in p.split()] or [guide]
        forget = [" ".join(concept if w == guide else w for w in p.split()) for p in overrides]
        remain = [p for p in given if guide not in p.split()] or [""]
        return forget, overrides, remain

    def erase(self, model, concept: str, *, guide: str = "", preserve: tuple[str, ...] = ()):
        if not guide.strip():
            raise UsageError("sfd: give --guide, the safe concept the forgotten one turns into (e.g. its look-alike)")
        teacher, fake, gen = model, model.copy(), model.copy()
        for m in (teacher, fake, gen):
            for p in list(m.unet.parameters()) + list(m.text_encoder.parameters()):
                p.requires_grad_(False)
        opt_g = torch.optim.Adam(gen.unet.parameters(), lr=self.lr, betas=(0.0, 0.999))
        opt_f = torch.optim.Adam(fake.unet.parameters(), lr=self.lr_fake, betas=(0.0, 0.999))
        forget, overrides, remain = self.prompts(concept, guide, preserve)
        rng, g = random.Random(self.seed), torch.Generator().manual_seed(self.seed)
        abar = model.ddpm().alphas_cumprod.to(model.device)
        B = self.batch_size
        t_gen = torch.full((B,), self.t_init, device=model.device)
        a0 = abar[self.t_init]

        def generate(ctx):
            z = torch.randn(model.latent_shape(B), generator=g).to(model.device)
            x_t = (1 - a0).sqrt() * z
            return (x_t - (1 - a0).sqrt() * gen.eps(x_t, t_gen, ctx)) / a0.sqrt()

        def noised(x0):
            t = torch.randint(self.t_min, self.t_max, (B,), generator=g).to(model.device)
            e = torch.randn(x0.shape, generator=g).to(model.device)
            a = abar[t].view(-1, *[1] * (x0.dim() - 1))
            return a.sqrt() * x0 + (1 - a).sqrt() * e, t, e, a

        def x_hat(net, x_t, t, ctx, a, u):  # the x0 prediction under classifier-free guidance
            e_u, e_c = net.eps(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([u, ctx])).chunk(2)
            return (x_t - (1 - a).sqrt() * (e_u + self.guidance * (e_c - e_u))) / a.sqrt()

        with torch.no_grad():
            u = model.encode([""] * B)
        self.history, t0 = [], time.perf_counter()
        for _ in range(self.steps):
            idx = [rng.randrange(len(forget)) for _ in range(B)]
            c_r = model.encode([rng.choice(remain) for _ in range(B)]).detach()
            c_f = model.encode([forget[i] for i in idx]).detach()
            c_o = model.encode([overrides[i] for i in idx]).detach()
            # 1. the fake score on G's samples, 10% of its prompts dropped to "" (the unconditional score)
            with torch.no_grad():
                xr, xf = generate(c_r), generate(c_f)
            fake.unet.train()
            loss_f = 0.0
            for x0, ctx, w in ((xr, c_r, 1.0), (xf, c_f, self.forget_weight)):
                x_t, t, e, _ = noised(x0)
                drop = (torch.rand(B, generator=g) < 0.1).to(model.device).view(-1, 1, 1)
                for p in fake.unet.parameters():
                    p.requires_grad_(True)
                loss_f = loss_f + w * torch.nn.functional.mse_loss(fake.eps(x_t, t, torch.where(drop, u, ctx)), e)
            opt_f.zero_grad(set_to_none=True)
            loss_f.backward()
            opt_f.step()
            for p in fake.unet.parameters():
                p.requires_grad_(False)
            fake.unet.eval()
            # 2. the generator: SiD's loss, the forget term scored by the teacher on the override
            for p in gen.unet.parameters():
                p.requires_grad_(True)
            gen.unet.train()
            loss_g = 0.0
            for ctx_g, ctx_p, w in ((c_r, c_r, 1.0), (c_f, c_o, self.forget_weight)):
                x0 = generate(ctx_g)
                x_t, t, _, a = noised(x0)
                p_ = x_hat(teacher, x_t, t, ctx_p, a, u)
                f_ = x_hat(fake, x_t, t, ctx_g, a, u)
                loss_g = loss_g + w * sid_generator_loss(p_, f_, x0, self.alpha)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            torch.nn.utils.clip_grad_value_(gen.unet.parameters(), 1.0)  # the reference's gradient value clip
            opt_g.step()
            for p in gen.unet.parameters():
                p.requires_grad_(False)
            gen.unet.eval()
            self.history.append(float(loss_g.detach()))
        self.seconds = time.perf_counter() - t0
        gen.one_step_t = self.t_init
        return gen
