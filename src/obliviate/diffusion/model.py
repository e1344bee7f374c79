"""A text-to-image diffusion model in the diffusers layout: built from config for the image world, or opened from
any diffusers text-to-image directory (UNet2DConditionModel + CLIPTextModel + tokenizer + scheduler, and a VAE
when present, in which case everything works in its latent space).

- Tokenizer: word level, laid out as CLIP's is: BOS, the words, EOS, then EOS as padding to `max_length`, with an
  attention mask over BOS..EOS. UCE and the prompt attacks rely on that layout (the concept's last word and the
  EOS tokens after it carry the concept).
- Text encoder: a small `CLIPTextModel`; the UNet reads its whole last hidden state [B, L, d] by cross-attention,
  as Stable Diffusion does.
- UNet: diffusers `UNet2DConditionModel` in pixel space (no VAE for the tiny model).
- Training: epsilon prediction with `DDPMScheduler` (Ho et al. 2020), captions dropped to the empty prompt with
  probability `p_uncond` for classifier-free guidance (Ho & Salimans 2022), EMA weights.
- Sampling: `DDIMScheduler` (Song et al. 2021), eps = eps(x, "") + g (eps(x, c) - eps(x, "")).

Directory: `model_index.json`, `unet/`, `text_encoder/`, `tokenizer/`, `scheduler/` (and `vae/` when present).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from obliviate.core.errors import UsageError
from obliviate.core.outputs import new_dir
from obliviate.core.shards import one_thread, sharded_backward

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"


def build_word_tokenizer(texts: list[str], max_length: int = 12):
    """A word-level fast tokenizer over the words of `texts` (lowercased), CLIP-style layout (module docstring)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in t.lower().split()})
    vocab = {BOS: 0, EOS: 1, UNK: 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}", special_tokens=[(BOS, 0), (EOS, 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=EOS, model_max_length=max_length
    )
    fast.padding_side = "right"
    return fast


def unknown_words(tok, text: str) -> list[str]:
    """Words of `text` the tokenizer maps to its unknown token (a concept it cannot represent)."""
    if tok.unk_token_id is None:
        return []
    return [w for w in text.split() if tok(w, add_special_tokens=False)["input_ids"] == [tok.unk_token_id]]


@dataclass
class T2IConfig:
    """Defaults: a 0.98M-parameter UNet at 16x16 took 0.40 s per batch-32 step on one thread (issue 11)."""

    size: int = 16
    channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 12

    def __post_init__(self):
        if self.size < 8 or self.size % (2 ** (len(self.channels) - 1)):
            raise UsageError(f"image size {self.size} must be >= 8 and divisible by {2 ** (len(self.channels) - 1)}")
        if self.text_dim % self.text_heads:
            raise UsageError("text_dim must be divisible by text_heads")


class T2I:
    """The components of a text-to-image model, and what obliviate does with them."""

    def __init__(self, unet, text_encoder, tokenizer, scheduler_config: dict, vae=None, one_step_t: int | None = None):
        self.unet, self.text_encoder, self.tokenizer, self.vae = unet, text_encoder, tokenizer, vae
        self.scheduler_config = dict(scheduler_config)
        # a one-step generator (Score Forgetting Distillation): its UNet maps noise at this timestep straight to an
        # image, and `sample` takes that one step (saved as one_step.json beside model_index.json)
        self.one_step_t = one_step_t

    # --- text ---
    def tokens(self, prompts: list[str]) -> dict:
        return self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """[B, L, d]: the text encoder's last hidden state, every position (as Stable Diffusion reads it)."""
        ids = self.tokens(prompts)["input_ids"].to(self.device)
        return self.text_encoder(input_ids=ids).last_hidden_state

    @property
    def device(self):
        return next(self.unet.parameters()).device

    # --- pixels <-> model space ---
    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return x
        return self.vae.encode(x).latent_dist.sample() * self.vae.config.scaling_factor

    def to_pixels(self, z: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return z.clamp(-1, 1)
        return self.vae.decode(z / self.vae.config.scaling_factor).sample.clamp(-1, 1)

    def latent_shape(self, n: int) -> tuple[int, ...]:
        c, s = self.unet.config.in_channels, self.unet.config.sample_size
        return (n, c, s, s)

    def ddpm(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.scheduler_config)

    def ddim(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler_config)

    def eps(self, z: torch.Tensor, t, context: torch.Tensor) -> torch.Tensor:
        return self.unet(z, t, encoder_hidden_states=context).sample

    def denoise(
        self, z: torch.Tensor, uncond: torch.Tensor, cond: torch.Tensor, guidance: float, sched, timesteps
    ) -> torch.Tensor:
        """DDIM steps of `sched` over `timesteps` with classifier-free guidance:
        eps = eps(z, uncond) + guidance (eps(z, cond) - eps(z, uncond)). Sampling runs every step; ESD-style
        erasers stop early to get x_t."""
        for t in timesteps:
            e_u, e_c = self.eps(torch.cat([z, z]), t, torch.cat([uncond, cond])).chunk(2)
            z = sched.step(e_u + guidance * (e_c - e_u), t, z).prev_sample
        return z

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        *,
        steps: int = 25,
        guidance: float = 2.0,
        seed: int = 0,
        context: torch.Tensor | None = None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """Images [N, 3, H, W] in [-1, 1], DDIM with classifier-free guidance; `context` replaces the encoded
        prompts (embedding attacks). Each image's noise depends only on (seed, its index). A one-step generator
        (`one_step_t`) takes its one step instead: `steps` and `guidance` do not apply."""
        out = []
        for s in range(0, len(prompts), batch_size):
            chunk = prompts[s : s + batch_size]
            cond = context[s : s + batch_size] if context is not None else self.encode(chunk)
            uncond = self.encode([""] * len(chunk))
            z = self.start_noise(len(chunk), seed, s)
            if self.one_step_t is not None:
                out.append(self.to_pixels(self.one_step(z, cond)).cpu())
                continue
            sched = self.ddim()
            sched.set_timesteps(steps)
            z = self.denoise(z, uncond, cond, guidance, sched, sched.timesteps)
            out.append(self.to_pixels(z).cpu())
        return torch.cat(out)

    def start_noise(self, n: int, seed: int, first: int = 0) -> torch.Tensor:
        """The starting noise of images first..first+n-1: each from its own generator, seeded by (seed, its index),
        so an image's noise does not depend on the batch it is drawn in."""
        g = [torch.Generator().manual_seed(seed * 1_000_003 + first + i) for i in range(n)]
        return torch.cat([torch.randn(self.latent_shape(1), generator=gi) for gi in g]).to(self.device)

    def one_step(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The one-step generator's output for noise z: x_t = sqrt(1 - abar_t) z at t = `one_step_t` (the image
        part of x_t is zero), then x0 = (x_t - sqrt(1 - abar_t) eps(x_t, t, cond)) / sqrt(abar_t), as SFD's DDPM
        code generates."""
        abar = self.ddpm().alphas_cumprod[self.one_step_t].to(z.device)
        x_t = (1 - abar).sqrt() * z
        t = torch.full((len(z),), self.one_step_t, device=z.device)
        return (x_t - (1 - abar).sqrt() * self.eps(x_t, t, cond)) / abar.sqrt()

    # --- persistence ---
    def save(self, out: Path) -> None:
        """Write the diffusers layout into `out`: a new directory (a temp dir renamed at the end), or a fresh one
        `outputs.output_dir` made. An existing model directory is never replaced."""
        with new_dir(out, "a text-to-image model") as tmp:
            self.unet.save_pretrained(tmp / "unet", safe_serialization=True)
            self.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            self.ddpm().save_pretrained(tmp / "scheduler")
            index = {
                "_class_name": "ObliviateTextToImage",
                "_diffusers_version": _diffusers_version(),
                "unet": ["diffusers", "UNet2DConditionModel"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", type(self.tokenizer).__name__],
                "scheduler": ["diffusers", "DDPMScheduler"],
            }
            if self.vae is not None:
                self.vae.save_pretrained(tmp / "vae", safe_serialization=True)
                index["vae"] = ["diffusers", type(self.vae).__name__]
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
            if self.one_step_t is not None:
                (tmp / "one_step.json").write_text(json.dumps({"timestep": self.one_step_t}) + "\n")

    def copy(self) -> "T2I":
        return T2I(
            copy.deepcopy(self.unet),
            copy.deepcopy(self.text_encoder),
            self.tokenizer,
            self.scheduler_config,
            self.vae,
            self.one_step_t,
        )


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def load_t2i(path: str | Path) -> T2I:
    """Open a diffusers text-to-image directory (UsageError, exit 2, when a part is missing). Always in float32:
    `--dtype` (language models' load dtype) is refused here rather than ignored."""
    from obliviate.models.load import dtype_entry

    entry = dtype_entry()
    if entry:
        raise UsageError(f"--dtype {entry['dtype']} applies to language models; text-to-image models load in float32")
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.utils import logging as df_logging
    from transformers import AutoTokenizer, CLIPTextModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # per-file "Loading weights" bars drown our own output
    df_logging.set_verbosity_error()
    df_logging.disable_progress_bar()
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"model directory not found: {path}")
    for part in ("unet", "text_encoder", "tokenizer", "scheduler"):
        if not (path / part).is_dir():
            raise UsageError(f"{path} is not a diffusers text-to-image directory: no {part}/")
    unet = UNet2DConditionModel.from_pretrained(path / "unet", use_safetensors=True).eval()
    text = CLIPTextModel.from_pretrained(path / "text_encoder", use_safetensors=True).eval()
    tok = AutoTokenizer.from_pretrained(path / "tokenizer")
    sched = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    vae = AutoencoderKL.from_pretrained(path / "vae", use_safetensors=True).eval() if (path / "vae").is_dir() else None
    one = json.loads((path / "one_step.json").read_text())["timestep"] if (path / "one_step.json").is_file() else None
    return T2I(unet, text, tok, sched, vae, one)


def build_t2i(tokenizer, cfg: T2IConfig = T2IConfig(), seed: int = 0) -> T2I:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_dim,
            intermediate_size=4 * cfg.text_dim,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=cfg.text_dim,
        )
    )
    n = len(cfg.channels)
    unet = UNet2DConditionModel(
        sample_size=cfg.size,
        in_channels=3,
        out_channels=3,
        block_out_channels=cfg.channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
        cross_attention_dim=cfg.text_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    return T2I(unet, text, tokenizer, dict(sched.config))


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def lr_factor(step: int, steps: int, cooldown: float = 0.0, warmup: int = 50) -> float:
    """The learning rate's multiplier at optimiser step `step` (0-based) of `steps`: a linear warm-up over `warmup`
    steps, then constant; with `cooldown` > 0, the last `cooldown` share of the steps decays linearly to zero, the
    warmup-stable-decay schedule (Hu et al. 2024, MiniCPM, sec. 4; Hagele et al. 2024, "Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations", eq. 1 with a linear cooldown)."""
    if not 0.0 <= cooldown <= 1.0:
        raise UsageError(f"cooldown must be between 0 and 1 (got {cooldown})")
    warm = min(1.0, (step + 1) / warmup)
    start = steps - cooldown * steps  # the first step of the decay
    if cooldown and step >= start:
        return warm * max(0.0, (steps - step) / (steps - start))
    return warm


def ema_decay(step: int, cap: float) -> float:
    """EMA decay at optimiser step `step` (0-based): (1 + step) / (10 + step), capped at `cap`, as diffusers'
    `EMAModel.get_decay` does without its power warm-up. A fixed 0.999 keeps the average ~700 steps behind, which at a
    CPU budget of ~1000 steps is mostly the random init."""
    return min(cap, (1 + step) / (10 + step))


def train_t2i(
    model: T2I,
    images: np.ndarray,
    captions: list[list[str]],
    *,
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 2e-3,
    p_uncond: float = 0.1,
    ema: float = 0.999,
    seed: int = 0,
    progress: bool = False,
    checkpoint_every: int = 0,
    on_checkpoint=None,
    bf16: bool = False,
    train_text_encoder: bool = True,
    shards: int = 2,
    cooldown: float = 0.0,
) -> dict:
    """Train UNet and text encoder jointly on (image, one of its captions) pairs; the EMA weights are kept in the
    model at the end. `bf16`: bf16 autocast of the forward pass (weights, gradients, AdamW state and EMA stay fp32),
    for CPUs with AMX or GPUs (bench/bf16_steps.py). Every `checkpoint_every` steps, `on_checkpoint(step, train_seconds)` runs with the EMA
    weights swapped in (eval mode); its time is not counted. It always runs `steps` steps: a wall-clock budget would
    make the model depend on the host's speed. Each batch is split into `shards` fixed parts whose gradients are
    computed at one intra-op thread each, in up to `shards` Python threads, and summed in order
    (`core.shards.sharded_backward`): the trained model is the same, bit for bit, at any thread count. The learning
    rate warms up over 50 steps, then holds, or with `cooldown` > 0 falls linearly to zero over that last share of
    the steps (`lr_factor`). Returns
    {"seconds", "steps", "loss_first", "loss_last"}."""
    from obliviate.core.progress import progress_bar

    if len(images) != len(captions) or not len(images):
        raise UsageError("train_t2i: one caption list per image, and at least one image")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    x_all = to_unit(images)
    params = list(model.unet.parameters()) + (list(model.text_encoder.parameters()) if train_text_encoder else [])
    for p in model.text_encoder.parameters():
        p.requires_grad_(train_text_encoder)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, cooldown))
    ddpm = model.ddpm()
    if not 1 <= shards <= batch_size:
        raise UsageError(f"train_t2i: shards must be between 1 and the batch size {batch_size} (got {shards})")
    edges = [round(i * batch_size / shards) for i in range(shards + 1)]
    parts = [slice(a, b) for a, b in zip(edges, edges[1:])]
    shadow = [p.detach().clone() for p in params]
    model.unet.train(), model.text_encoder.train()
    t0, losses = time.perf_counter(), []
    # the whole step at one intra-op thread (the shards' threads are the parallelism): the gradient clipping's norm
    # is a reduction too, and would otherwise round by the thread count
    with one_thread() as threads, progress_bar(steps, "training text-to-image", enabled=progress) as bar:
        for step in range(steps):
            idx = rng.integers(0, len(images), batch_size)
            x = model.to_model_space(x_all[idx].to(model.device))
            texts = ["" if rng.random() < p_uncond else captions[i][rng.integers(len(captions[i]))] for i in idx]
            noise = torch.randn_like(x)
            t = torch.randint(0, ddpm.config.num_train_timesteps, (len(idx),), device=x.device)

            def loss_of(part: slice) -> torch.Tensor:
                # this part's share of the batch's mean squared error; autocast is per thread, so entered here
                with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                    x_t = ddpm.add_noise(x[part], noise[part], t[part])
                    eps = model.eps(x_t, t[part], model.encode(texts[part]))
                return (eps.float() - noise[part]).pow(2).sum() / noise.numel()

            opt.zero_grad(set_to_none=True)
            loss = sharded_backward(loss_of, parts, params, threads)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            decay = ema_decay(step, ema)
            with torch.no_grad():
                for s, p in zip(shadow, params):
                    s.mul_(decay).add_(p.detach(), alpha=1 - decay)
            losses.append(float(loss.detach()))
            bar.advance()
            if on_checkpoint and checkpoint_every and (step + 1) % checkpoint_every == 0:
                paused = time.perf_counter()
                live = [p.detach().clone() for p in params]
                with torch.no_grad():
                    for s_, p in zip(shadow, params):
                        p.copy_(s_)
                model.unet.eval(), model.text_encoder.eval()
                torch.set_num_threads(threads)  # the caller's threads for its evaluation
                on_checkpoint(step + 1, paused - t0)
                torch.set_num_threads(1)
                with torch.no_grad():
                    for v, p in zip(live, params):
                        p.copy_(v)
                model.unet.train(), model.text_encoder.train()
                t0 += time.perf_counter() - paused
    with torch.no_grad():
        for s, p in zip(shadow, params):
            p.copy_(s)
    model.unet.eval(), model.text_encoder.eval()
    for p in model.text_encoder.parameters():
        p.requires_grad_(True)
    k = max(1, min(50, len(losses) // 10))
    return {
        "seconds": time.perf_counter() - t0,
        "steps": len(losses),
        "loss_first": float(np.mean(losses[:k])),
        "loss_last": float(np.mean(losses[-k:])),
    }
