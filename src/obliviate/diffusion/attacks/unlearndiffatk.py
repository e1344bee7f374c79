"""UnlearnDiffAtk (Zhang et al. 2024, "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy
To Generate Unsafe Images ... For Now", ECCV 2024, arXiv:2310.11868; reference code
github.com/OPTML-Group/Diffusion-MU-Attack).

An adversarial prompt for an erased model, found with the erased model itself as the judge of its own denoising:
`k` prefix tokens are put before the prompt and optimised so that the erased model denoises a target image (an
image of the erased concept, e.g. the original model's generation) as well as it can:

    min_prefix  E_{t, eps} || eps_erased(x_t(target), t, text(prefix + prompt)) - eps ||^2

The prefix lives on the vocabulary simplex: logits z [k, V]; the forward pass uses the one-hot of argmax z and
the backward pass the softmax's gradient (straight-through), as the reference code's discrete optimisation does.
The prefix's token embeddings are swapped in with a forward hook on the text encoder's token-embedding table, so
any CLIPTextModel works. `denoising_loss` on a fixed (t, noise) set also scores any given prefix, which lets tests
compare the optimised prefix with brute-force search over short prefixes.

Attack success (the reference's ASR) is measured with the caller's judge (the target-concept classifier): the share
of attacked prompts whose generation it recognises; pre-ASR is the same without the prefix. As the reference code
does (`src/attackers/hard_prompt_.py`: after each outer step it projects the prefix to tokens, generates with the
evaluation seed, and stops at the first success), the prefix is judged during the optimisation, every `eval_every`
steps, and a prompt counts as broken when any judged prefix succeeds. The paper reports only the final ASR; we follow
the code. `eval_every=0` judges the final prefix alone. The code's schedule is followed too: step i uses the i-th of
`steps` evenly spaced timesteps, from low to high, with one noise draw. On the demo's ESD-x erasure of `star` (24
target prompts) that schedule found 0.58 where random timesteps (8 draws per step) found 0.38 (docs/benchmarks.md, text-to-image).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from obliviate.core.errors import UsageError
from obliviate.diffusion.attacks import DIFFUSION_ATTACKS, Finding


@contextmanager
def prefix_embeddings(model, embeds: torch.Tensor, start: int = 1):
    """Replace the token embeddings at positions start..start+k-1 of every sequence by embeds [k, d]."""
    table = model.text_encoder.get_input_embeddings()

    def hook(mod, args, out):
        out = out.clone()
        out[:, start : start + embeds.shape[0]] = embeds.to(out.dtype).unsqueeze(0)
        return out

    h = table.register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()


@contextmanager
def soft_prefix(model, weights: torch.Tensor, start: int = 1):
    """The same with points of the vocabulary simplex, weights [k, V]: embeddings weights @ E."""
    table = model.text_encoder.get_input_embeddings()
    with prefix_embeddings(model, weights.to(table.weight.dtype) @ table.weight, start):
        yield


def prefixed(tok, prompt: str, k: int) -> str:
    """The prompt with k placeholder words in front (their embeddings are replaced); the tokenizer's first real
    word is the placeholder, so the token layout (BOS, prefix, prompt, EOS, padding) is the one sampled."""
    vocab = [w for w, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]) if w not in tok.all_special_tokens]
    return " ".join([vocab[0]] * k + [prompt])


def denoising_loss(
    model, prompt: str, weights: torch.Tensor, images: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Mean || eps(x_t, t, text(prefix + prompt)) - noise ||^2 over the (image, t, noise) triples; images in
    model space [N, C, H, W]."""
    ddpm = model.ddpm()
    x_t = ddpm.add_noise(images, noise, t)
    with soft_prefix(model, weights):
        ctx = model.encode([prefixed(model.tokenizer, prompt, weights.shape[0])] * len(images))
    return torch.nn.functional.mse_loss(model.eps(x_t, t, ctx), noise)


@DIFFUSION_ATTACKS.register("unlearndiffatk")
@dataclass
class UnlearnDiffAtk:
    prefix_tokens: int = 5
    # the reference code's schedule: one step at each of 50 evenly spaced timesteps, low to high (its task's
    # `sampled_t`, n_samples=50), one noise draw each (its `iteration=1`); timesteps=random draws `samples` (t, noise)
    # pairs per step instead
    steps: int = 50
    lr: float = 0.01
    samples: int = 1
    timesteps: str = "sequential"
    eval_every: int = 1  # judge the prefix every this many steps, stop at a success (the reference: every step)
    seed: int = 0
    judged_during_attack = True  # the audit passes its judge to find

    def __post_init__(self):
        if self.timesteps not in ("random", "sequential"):
            raise UsageError(f"unlearndiffatk: timesteps must be random or sequential (got {self.timesteps!r})")

    def attack(self, model, prompt: str, target_images: torch.Tensor, fixed: tuple | None = None, check=None) -> dict:
        """Optimise the prefix against `target_images` ([N, 3, H, W] in [-1, 1]). Returns {"prefix_ids",
        "prompt" (the adversarial text), "history" (loss per step), "stopped_at" (the step whose prefix `check`
        accepted, else None)}. `fixed` = (image index, t, noise) uses one set of draws at every step (a
        deterministic objective, as brute force scores). `check(text) -> bool`, called every `eval_every` steps,
        ends the optimisation when it accepts the adversarial text."""
        g = torch.Generator().manual_seed(self.seed)
        V = model.text_encoder.get_input_embeddings().weight.shape[0]
        special = set(model.tokenizer.all_special_ids)
        allowed = torch.tensor([i not in special for i in range(V)])
        z = (0.01 * torch.randn(self.prefix_tokens, V, generator=g)).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=self.lr)
        with torch.no_grad():
            x0 = model.to_model_space(target_images.to(model.device))
        for p in list(model.unet.parameters()) + list(model.text_encoder.parameters()):
            p.requires_grad_(False)
        history = []
        T = model.ddpm().config.num_train_timesteps
        for step in range(self.steps):
            if fixed is not None:
                idx, t, noise = fixed
            else:
                idx = torch.randint(0, len(x0), (self.samples,), generator=g)
                t = (
                    torch.randint(0, T, (self.samples,), generator=g)
                    if self.timesteps == "random"
                    else torch.full((self.samples,), (2 * step + 1) * T // (2 * self.steps))
                )  # the reference's sweep
                noise = torch.randn((self.samples, *x0.shape[1:]), generator=g)
            logits = z.masked_fill(~allowed, float("-inf"))
            soft = torch.softmax(logits, -1)
            hard = torch.nn.functional.one_hot(logits.argmax(-1), V).to(soft.dtype)
            w = hard + soft - soft.detach()  # straight-through: one-hot forward, softmax backward
            loss = denoising_loss(model, prompt, w, x0[idx], t, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
            if check is not None and self.eval_every and (step + 1) % self.eval_every == 0:
                found = self._found(model, z, allowed, prompt)
                if check(found["prompt"]):
                    return {**found, "history": history, "stopped_at": step + 1}
        return {**self._found(model, z, allowed, prompt), "history": history, "stopped_at": None}

    @staticmethod
    def _found(model, z, allowed, prompt: str) -> dict:
        ids = z.detach().masked_fill(~allowed, float("-inf")).argmax(-1).tolist()
        words = model.tokenizer.convert_ids_to_tokens(ids)  # real vocabulary words before the prompt
        return {"prefix_ids": ids, "prompt": " ".join(words + [prompt])}

    def find(self, erased, original, prompt: str, target_images: torch.Tensor, sample, judge=None) -> Finding:
        """The adversarial prompt and the erased model's generation for it: the first judged one that `judge`
        (images -> [bool]) accepts, else the final prefix's."""
        seen: dict[str, torch.Tensor] = {}

        def generate(text: str) -> torch.Tensor:
            if text not in seen:
                seen[text] = erased.sample([text], steps=sample.steps, guidance=sample.guidance, seed=sample.seed)
            return seen[text]

        check = (lambda text: bool(judge(generate(text))[0])) if judge is not None else None
        found = self.attack(erased, prompt, target_images, check=check)["prompt"]
        return Finding(images=generate(found), prompt=found)
