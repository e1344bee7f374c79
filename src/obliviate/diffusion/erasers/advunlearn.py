"""AdvUnlearn (Zhang et al. 2024, "Defensive Unlearning with Adversarial Training for Robust Concept Erasure in
Diffusion Models", NeurIPS 2024, arXiv:2405.15234; reference code github.com/OPTML-Group/AdvUnlearn,
`train-scripts/AdvUnlearn.py`, `utils/attack_util.py`, `utils/get_loss.py`).

Adversarial training of the text encoder (the paper finds it, not the UNet, the module to robustify), as the
reference code runs it (its README's settings where they override argparse's defaults):

- warm-up: the first `warmup` iterations are plain ESD on the clean concept prompt through the trained encoder
  (`--warmup_iter` 200 of 1000);
- inner attack, every iteration after the warm-up (`--adv_prompt_update_step` 1): `prefix_tokens` continuous
  token embeddings before the concept (`--attack_type prefix_k`, `--adv_prompt_num` 1, `--attack_embd_type
  word_embd`: no projection to the vocabulary, no norm bound), started from random vocabulary rows (the README's
  `--attack_init random`; `latest` warm-starts from the previous round), moved `attack_steps` (30) Adam steps of
  `attack_lr` (1e-3) to make the trained encoder's noise prediction for "prefix + concept" match the frozen
  model's for the concept, each step at a fresh x_t (DDIM with the frozen model towards the concept, stopped at a
  random step). `attack_method=fast_at` (the reference's fast variant) takes Adam steps on the gradient's sign;
  `pgd` on the gradient. As in the code, the attack's gradient is never zeroed (it accumulates over the steps), and
  the embedding returned is the one the last step scored (the last update is not used);
- outer step: ESD's loss (see `esd.py`) with its target from the frozen model and the *clean* concept prompt, its
  prediction from the trained encoder on the *adversarial* prompt, plus the utility-retaining regulariser
  (`--retain_train reg`): `retain_weight` (0.3) x || eps(x_t^r, E_trained(r)) - eps*(x_t^r, E*(r)) ||^2 on
  `retain_batch` (5) retain prompts r per iteration, each x_t^r sampled by DDIM with r to the same step;
- trained: every transformer layer of the text encoder and its final layer norm (`--train_method
  text_encoder_full`); the token and position embeddings are not (`layers="all"` trains them too).

Scaled to the image world: the reference fine-tunes SD's 123M-parameter CLIP for 1000 iterations at lr 1e-5 on one
noise sample per step with 50 DDIM steps and 243 retain prompts ("a photo of <object>", the concept's neighbours
filtered out); the world's 2-layer encoder trains `steps` iterations at `lr` on `batch_size` samples, the warm-up the
same fifth of them, `ddim_steps` DDIM steps, and retains on the prompts passed as `preserve` (the demo: the world's
prompts that do not name the concept); with none, on the guide prompt.
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


def text_encoder_layers(text_encoder, layers: str) -> list[torch.nn.Parameter]:
    """The parameters AdvUnlearn trains: "encoder" (the reference's `text_encoder_full`) every one but the token
    and position embeddings; "all" every one."""
    if layers == "all":
        return list(text_encoder.parameters())
    skip = {id(p) for p in text_encoder.get_input_embeddings().parameters()}
    return [p for n, p in text_encoder.named_parameters() if id(p) not in skip and "embeddings." not in n]


@ERASERS.register("advunlearn")
@dataclass
class AdvUnlearn(Eraser):
    name = "advunlearn"
    description = "ESD on the text encoder against an inner soft-prompt attack, with a retain term (Zhang et al. 2024)"
    retain_prompts = True  # the demo passes the world's prompts without the concept as `preserve`
    steps: int = 100
    warmup: int = 20
    lr: float = 1e-4
    eta: float = 1.0
    start_guidance: float = 3.0
    ddim_steps: int = 25
    batch_size: int = 4
    prefix_tokens: int = 1
    attack_steps: int = 30
    attack_lr: float = 1e-3
    attack_method: str = "pgd"
    attack_init: str = "random"
    retain_weight: float = 0.3
    retain_batch: int = 5
    layers: str = "encoder"
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.prefix_tokens < 1 or self.attack_steps < 0 or self.ddim_steps < 2:
            raise UsageError("advunlearn: steps >= 1, prefix_tokens >= 1, attack_steps >= 0, ddim_steps >= 2")
        if self.attack_method not in ("pgd", "fast_at") or self.attack_init not in ("random", "latest"):
            raise UsageError("advunlearn: attack_method is pgd or fast_at, attack_init random or latest")
        if self.layers not in ("encoder", "all") or self.warmup < 0 or self.retain_batch < 1:
            raise UsageError("advunlearn: layers is encoder or all, warmup >= 0, retain_batch >= 1")

    def _x_t(self, frozen, cond, u, g, B):
        """(x_t, t): DDIM with the frozen model towards `cond` (guidance `start_guidance`), stopped at a random
        step, as the reference's `quick_sample_till_t` (the trained model's UNet is the frozen one)."""
        sched = frozen.ddim()
        sched.set_timesteps(self.ddim_steps)
        stop = int(torch.randint(0, self.ddim_steps - 1, (1,), generator=g))
        z = torch.randn(frozen.latent_shape(B), generator=g).to(frozen.device)
        with torch.no_grad():
            z = frozen.denoise(z, u, cond, self.start_guidance, sched, sched.timesteps[:stop])
        return z, sched.timesteps[stop], stop

    def attack(self, frozen, edited, adv_text, c, u, g, init) -> torch.Tensor:
        """The inner attack: prefix embeddings [k, d] (module docstring)."""
        B = self.batch_size
        delta = init.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=self.attack_lr)
        scored = delta.detach().clone()
        for _ in range(self.attack_steps):
            z, t, _ = self._x_t(frozen, c, u, g, B)
            with torch.no_grad():
                want = frozen.eps(z, t, c)
            with prefix_embeddings(edited, delta):
                ctx = edited.encode([adv_text] * B)
            loss = torch.nn.functional.mse_loss(edited.eps(z, t, ctx), want)
            loss.backward()  # never zeroed, as in the reference: the gradient accumulates over the steps
            scored = delta.detach().clone()
            if self.attack_method == "fast_at":
                delta.grad.sign_()
            opt.step()
        return scored

    def erase(self, model, concept: str, *, guide: str = "", preserve: tuple[str, ...] = ()):
        frozen, edited = model, model.copy()
        for p in list(edited.unet.parameters()) + list(edited.text_encoder.parameters()):
            p.requires_grad_(False)
        params = text_encoder_layers(edited.text_encoder, self.layers)
        opt = torch.optim.Adam(params, lr=self.lr)
        g = torch.Generator().manual_seed(self.seed)
        rng = random.Random(self.seed)
        retain = [p for p in preserve if p.strip()] or [guide]
        pool: list[str] = []
        table = edited.text_encoder.get_input_embeddings().weight
        adv_text = prefixed(edited.tokenizer, concept, self.prefix_tokens)
        B = self.batch_size
        with torch.no_grad():
            u, c = frozen.encode([guide] * B), frozen.encode([concept] * B)
        self.history, t0, latest = [], time.perf_counter(), None
        for i in range(self.steps):
            z, t, stop = self._x_t(frozen, c, u, g, B)
            with torch.no_grad():
                e_u, e_c = frozen.eps(torch.cat([z, z]), t, torch.cat([u, c])).chunk(2)
                target = esd_target(e_u, e_c, self.eta)
            if i >= self.warmup:  # the attack, on the encoder as it stands (frozen while it runs)
                if latest is None or self.attack_init == "random":
                    latest = table[[rng.randrange(table.shape[0]) for _ in range(self.prefix_tokens)]].detach()
                edited.text_encoder.eval()
                latest = self.attack(frozen, edited, adv_text, c, u, g, latest)
            for p in params:
                p.requires_grad_(True)
            edited.text_encoder.train()
            if i < self.warmup:  # plain ESD through the trained encoder on the clean prompt
                ctx = edited.encode([concept] * B)
            else:
                with prefix_embeddings(edited, latest):
                    ctx = edited.encode([adv_text] * B)
            loss = torch.nn.functional.mse_loss(edited.eps(z, t, ctx), target)
            if self.retain_weight > 0:
                if len(pool) < self.retain_batch:  # without replacement, refilled when it runs short
                    pool = rng.sample(retain, len(retain)) * max(1, -(-self.retain_batch // len(retain)))
                r, pool = pool[: self.retain_batch], pool[self.retain_batch :]
                with torch.no_grad():
                    e_r = frozen.encode(r)
                    sched = frozen.ddim()
                    sched.set_timesteps(self.ddim_steps)
                    zr = torch.randn(frozen.latent_shape(len(r)), generator=g).to(frozen.device)
                    zr = frozen.denoise(
                        zr, frozen.encode([""] * len(r)), e_r, self.start_guidance, sched, sched.timesteps[:stop]
                    )
                    want_r = frozen.eps(zr, t, e_r)
                loss = loss + self.retain_weight * torch.nn.functional.mse_loss(
                    edited.eps(zr, t, edited.encode(r)), want_r
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for p in params:
                p.requires_grad_(False)
            self.history.append(float(loss.detach()))
        edited.text_encoder.eval()
        self.seconds = time.perf_counter() - t0
        return edited
