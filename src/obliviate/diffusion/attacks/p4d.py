"""P4D: Prompting4Debugging (Chin et al. 2024, "Prompting4Debugging: Red-Teaming Text-to-Image Diffusion Models
by Finding Problematic Prompts", ICML 2024, arXiv:2309.06135; reference code github.com/joycenerd/P4D).

Find a prompt for the *erased* model whose noise prediction matches what the *original* model predicts for the
target prompt, on noisy versions of the original model's images of it:

    min_P  E_{t, eps} || eps_erased(x_t, text(P)) - eps_orig(x_t, c_target) ||^2

P is `prompt_tokens` soft token embeddings optimised in continuous space and projected to their nearest
vocabulary rows in the forward pass (PEZ, Wen et al. 2023: the gradient taken at the projection is applied to the
continuous embeddings). The found prompt is the projected tokens, followed by the target prompt when
`keep_prompt` (the reference's P4D-K variant inserts learnable tokens among the prompt's; P4D-N replaces it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obliviate.diffusion.attacks import DIFFUSION_ATTACKS, Finding
from obliviate.diffusion.attacks.unlearndiffatk import prefix_embeddings, prefixed


def nearest_tokens(embeds: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Indices [k] of the vocabulary rows nearest (cosine) to each of embeds [k, d]."""
    sim = torch.nn.functional.normalize(embeds, dim=-1) @ torch.nn.functional.normalize(table, dim=-1).T
    return sim.masked_fill(~allowed, float("-inf")).argmax(-1)


@DIFFUSION_ATTACKS.register("p4d")
@dataclass
class P4D:
    prompt_tokens: int = 4
    steps: int = 40
    lr: float = 0.1
    samples: int = 8
    keep_prompt: bool = True
    seed: int = 0

    def attack(self, erased, original, prompt: str, target_images: torch.Tensor) -> dict:
        g = torch.Generator().manual_seed(self.seed)
        table = erased.text_encoder.get_input_embeddings().weight.detach()
        special = set(erased.tokenizer.all_special_ids)
        allowed = torch.tensor([i not in special for i in range(table.shape[0])])
        start = torch.randint(0, table.shape[0], (self.prompt_tokens,), generator=g)
        soft = table[start].clone().requires_grad_(True)
        opt = torch.optim.Adam([soft], lr=self.lr)
        for p in list(erased.unet.parameters()) + list(erased.text_encoder.parameters()):
            p.requires_grad_(False)
        with torch.no_grad():
            x0 = original.to_model_space(target_images.to(original.device))
            c_target = original.encode([prompt])
        text = prefixed(erased.tokenizer, prompt if self.keep_prompt else "", self.prompt_tokens).strip()
        ddpm, T, history = erased.ddpm(), erased.ddpm().config.num_train_timesteps, []
        for _ in range(self.steps):
            idx = torch.randint(0, len(x0), (self.samples,), generator=g)
            t = torch.randint(0, T, (self.samples,), generator=g)
            noise = torch.randn((self.samples, *x0.shape[1:]), generator=g)
            x_t = ddpm.add_noise(x0[idx], noise, t)
            with torch.no_grad():
                want = original.eps(x_t, t, c_target.expand(self.samples, -1, -1))
            hard = table[nearest_tokens(soft.detach(), table, allowed)]
            proj = soft + (hard - soft).detach()  # PEZ: forward at the projection, gradient to the soft embeddings
            with prefix_embeddings(erased, proj):
                ctx = erased.encode([text] * self.samples)
            loss = torch.nn.functional.mse_loss(erased.eps(x_t, t, ctx), want)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
        ids = nearest_tokens(soft.detach(), table, allowed).tolist()
        words = erased.tokenizer.convert_ids_to_tokens(ids)
        return {
            "prompt_ids": ids,
            "prompt": " ".join(words + ([prompt] if self.keep_prompt else [])),
            "history": history,
        }

    def find(self, erased, original, prompt: str, target_images: torch.Tensor, sample) -> Finding:
        found = self.attack(erased, original, prompt, target_images)["prompt"]
        images = erased.sample([found], steps=sample.steps, guidance=sample.guidance, seed=sample.seed)
        return Finding(images=images, prompt=found)
