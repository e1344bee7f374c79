"""The target loss of the prompt-search attacks: the cross-entropy of a behaviour's target after the attacked prompt
(`adversarial.Slots`: before + suffix + after), with the prompt's prefix kept in a KV cache so that each candidate
suffix runs only its own tokens and those after it (nanoGCG's `prefix_cache`; llm-attacks runs every full
sequence). GCG, random search and the embedding attack score candidates with it."""

from __future__ import annotations

from obliviate.audit.attacks.adversarial import Slots


def _keeps_logits(model) -> bool:
    """Whether the model's forward can return the logits of its last positions only (`logits_to_keep`)."""
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters


class TargetLoss:
    """Cross-entropy of the target after `before + suffix + after`, for batches of suffixes.

    `cached=True` runs `before` once and reuses its keys and values for every candidate (nanoGCG's
    `prefix_cache`); `cached=False` runs every candidate's full sequence (llm-attacks). Both give the same loss
    up to float error (tested); the cache is what makes candidate evaluation fast (`bench/gcg_cache.py`)."""

    def __init__(self, model, s: Slots, cached: bool = True):
        import torch

        self.model, self.s, self.cached = model, s, cached
        self.embed = model.get_input_embeddings()
        dev = self.embed.weight.device
        self.before = torch.tensor([s.before], device=dev)
        self.after = torch.tensor([s.after], device=dev, dtype=torch.long)
        self.target = torch.tensor([s.target], device=dev)
        self._prefix = None
        if cached and s.before:
            from transformers import DynamicCache

            self._prefix = DynamicCache(config=model.config)  # filled in place by the forward pass
            with torch.no_grad():
                model(input_ids=self.before, cache=self._prefix, use_cache=True)

    def _cache(self, batch: int):
        """A fresh cache holding the prefix's keys and values for `batch` rows (a forward pass appends to it)."""
        import copy

        cache = copy.deepcopy(self._prefix)
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        return cache

    def logits(self, suffix_embeds):
        """Logits [B, T, V] at the positions that predict the target tokens, for suffix embeddings [B, L, d]."""
        import torch

        b = suffix_embeds.shape[0]
        rest = self.embed(torch.cat([self.after, self.target], dim=1)).expand(b, -1, -1)
        x = torch.cat([suffix_embeds, rest.to(suffix_embeds.dtype)], dim=1)
        n_t = self.target.shape[1]
        keep = {"logits_to_keep": n_t + 1} if _keeps_logits(self.model) else {}  # the target's logits only
        if self._prefix is not None:
            out = self.model(inputs_embeds=x, cache=self._cache(b), use_cache=True, **keep)
        else:
            head = self.embed(self.before).expand(b, -1, -1).to(x.dtype)
            x = torch.cat([head, x], dim=1)
            out = self.model(inputs_embeds=x, use_cache=False, **keep)
        # the logits at position i predict token i + 1: the target's tokens are the last n_t of x
        return out.logits[:, -n_t - 1 : -1, :]

    def extended(self, ids: list[int]) -> "TargetLoss":
        """This loss with `ids` moved from the start of the suffix into the prefix: with the cache, their keys and
        values are computed once on top of the prefix's (GCG's candidates share the suffix's first tokens)."""
        import copy
        import dataclasses

        import torch

        new = copy.copy(self)
        new.s = dataclasses.replace(self.s, before=self.s.before + list(ids))
        new.before = torch.tensor([new.s.before], device=self.before.device)
        if self._prefix is not None and len(ids):
            new._prefix = self._cache(1)  # filled in place by the forward pass
            with torch.no_grad():
                self.model(input_ids=new.before[:, len(self.s.before) :], cache=new._prefix, use_cache=True)
        return new

    def from_embeds(self, suffix_embeds):
        """Mean cross-entropy over the target tokens, [B] (differentiable)."""
        import torch.nn.functional as F

        lg = self.logits(suffix_embeds).float()
        tgt = self.target.expand(lg.shape[0], -1)
        return F.cross_entropy(lg.transpose(1, 2), tgt, reduction="none").mean(dim=1)

    def __call__(self, suffix_ids, batch: int = 64):
        """Loss [B] of suffix ids [B, L], without gradients, in chunks of `batch` rows."""
        import torch

        outs = []
        with torch.no_grad():
            for i in range(0, suffix_ids.shape[0], batch):
                outs.append(self.from_embeds(self.embed(suffix_ids[i : i + batch])))
        return torch.cat(outs)

    def first_token_logprob(self, suffix_ids, batch: int = 64):
        """log p(first target token), [B]: the objective of adaptive random search."""
        import torch

        outs = []
        with torch.no_grad():
            for i in range(0, suffix_ids.shape[0], batch):
                lg = self.logits(self.embed(suffix_ids[i : i + batch]))[:, 0, :].float()
                outs.append(torch.log_softmax(lg, dim=-1)[:, self.s.target[0]])
        return torch.cat(outs)
