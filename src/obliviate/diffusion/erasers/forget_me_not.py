"""Forget-Me-Not (Zhang et al. 2023, "Forget-Me-Not: Learning to Forget in Text-to-Image Diffusion Models",
arXiv:2303.17591; reference code github.com/SHI-Labs/Forget-Me-Not, `attn.py` / `AttnController`).

Attention re-steering (Sec. 3.2): while the UNet denoises noisy images of the concept, conditioned on a prompt that
names it, read every cross-attention layer's attention probabilities at the concept's token positions, and train
the UNet to make them small:

    L = || concat_l A_l[:, :, concept positions] ||_2        (A_l: [B x heads, H W, L], softmax over tokens)

the Frobenius norm of all the selected probabilities together (the reference's `torch.cat(attn_probs).norm()`).
The concept then no longer steers the image; the freed attention mass goes to the other tokens. The images are
the original model's generations for the concept's prompt (the paper uses a few reference images of the concept),
noised at uniform random timesteps. As in the reference's default for objects and styles, the cross-attention
layers train (`train="cross_attention"`; `"unet"` trains every UNet parameter).

The concept's positions are where its token ids occur in the tokenised prompt (any tokenizer: a word-level one,
or CLIP's BPE, where one word may be several tokens).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from obliviate.core.errors import UsageError
from obliviate.diffusion.erasers import ERASERS, Eraser
from obliviate.diffusion.erasers.esd import trainable


def concept_positions(model, prompt: str, concept: str) -> list[int]:
    """Token indices of `concept` inside the tokenised `prompt` (every occurrence of its id sequence)."""
    ids = model.tokens([prompt])["input_ids"][0].tolist()
    want = model.tokenizer(concept, add_special_tokens=False)["input_ids"]
    if not want:
        raise UsageError(f"forget_me_not: {concept!r} has no tokens")
    hits = [i + j for i in range(len(ids) - len(want) + 1) if ids[i : i + len(want)] == want for j in range(len(want))]
    if not hits:
        raise UsageError(f"forget_me_not: {concept!r} does not occur in the prompt {prompt!r}")
    return hits


def attention_resteering_loss(probs: list[torch.Tensor], positions: list[int]) -> torch.Tensor:
    """|| concat_l probs_l[..., positions] ||_2 over the recorded cross-attention probabilities [B*h, HW, L]."""
    return torch.cat([p[..., positions].reshape(-1) for p in probs]).norm()


class RecordCrossAttention:
    """Context manager: swaps every cross-attention module's processor for diffusers' plain `AttnProcessor`, whose
    `attn.get_attention_scores` (the softmax probabilities) is wrapped to record its output; restores on exit."""

    def __init__(self, unet):
        self.unet, self.probs, self.saved = unet, [], {}

    def __enter__(self):
        from diffusers.models.attention_processor import AttnProcessor

        for name, m in self.unet.named_modules():
            if getattr(m, "is_cross_attention", False) and hasattr(m, "get_attention_scores"):
                self.saved[name] = (m, m.processor)
                m.set_processor(AttnProcessor())
                scores = m.get_attention_scores

                def recorded(q, k, mask=None, _scores=scores):
                    p = _scores(q, k, mask)
                    self.probs.append(p)
                    return p

                m.get_attention_scores = recorded  # an instance attribute shadows the method until __exit__
        return self

    def __exit__(self, *exc):
        for m, proc in self.saved.values():
            del m.get_attention_scores
            m.set_processor(proc)
        self.saved = {}


@ERASERS.register("forget_me_not")
@dataclass
class ForgetMeNot(Eraser):
    name = "forget_me_not"
    description = "attention re-steering: cross-attention on the concept's tokens trained to zero (Zhang et al. 2023)"
    steps: int = 100
    lr: float = 1e-3
    images: int = 16  # the original model's generations of the concept
    batch_size: int = 8
    guidance: float = 2.0
    ddim_steps: int = 25
    train: str = "cross_attention"  # or "unet"
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.images < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UsageError("forget_me_not: steps, images, batch_size >= 1 and lr > 0")
        if self.train not in ("cross_attention", "unet"):
            raise UsageError(f"forget_me_not: train must be cross_attention or unet, not {self.train!r}")

    def erase(self, model, concept: str, *, guide: str = "", preserve: tuple[str, ...] = ()):
        positions = concept_positions(model, concept, concept)
        edited = model.copy()
        for p in edited.unet.parameters():
            p.requires_grad_(False)
        params = trainable(edited.unet, True) if self.train == "cross_attention" else list(edited.unet.parameters())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=self.lr)
        g = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            x0 = model.to_model_space(
                model.sample([concept] * self.images, steps=self.ddim_steps, guidance=self.guidance, seed=self.seed).to(
                    model.device
                )
            )
            ctx = model.encode([concept] * self.batch_size)
        ddpm = edited.ddpm()
        self.history, t0 = [], time.perf_counter()
        for _ in range(self.steps):
            idx = torch.randint(0, self.images, (self.batch_size,), generator=g)
            noise = torch.randn((self.batch_size, *x0.shape[1:]), generator=g)
            t = torch.randint(0, ddpm.config.num_train_timesteps, (self.batch_size,), generator=g)
            with RecordCrossAttention(edited.unet) as rec:
                edited.eps(ddpm.add_noise(x0[idx], noise, t), t, ctx)
            loss = attention_resteering_loss(rec.probs, positions)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.history.append(float(loss.detach()))
        for p in params:
            p.requires_grad_(False)
        self.seconds = time.perf_counter() - t0
        return edited
