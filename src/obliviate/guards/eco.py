"""ECO: embedding-corrupted prompts (Liu et al. 2024, "Large Language Model Unlearning via Embedding-Corrupted
Prompts", NeurIPS 2024, arXiv:2406.07933).

The model's weights stay as they are. A prompt classifier (the gate) decides whether a prompt touches the forget
target; for a flagged prompt, the input embeddings of its prompt tokens are corrupted at prefill, so the model
answers as if it never knew (Sec. 3):

- Gate: character n-gram TF-IDF + logistic regression, trained on forget versus retain questions (names decide
  these prompts; the paper fine-tunes a RoBERTa classifier). Its threshold comes from split-conformal
  calibration on held-out forget questions at the miss rate `miss_rate` (the paper sets a fixed confidence
  threshold; the conformal one bounds the share of forget prompts let through).
- Corruption of each flagged prompt's token embeddings e [T, d] (`corruption`, following the authors' code):
  `noise_first_k`: e[:, :k] += sigma * N(0, 1) (their `rand_noise_first_n`, default k = 1 dimension);
  `zero_top_k`: zero the k coordinates of largest magnitude of each token (their `zero_out_top_k`);
  `flip_top_k`: flip their sign (their `flip_sign_top_k`). The noise is seeded per prompt, so a prompt gets the
  same corruption whatever batch it is in.
- sigma is chosen by zeroth-order search (Sec. 3.2: the corrupted model's forget metric, measured with forward
  passes only, is driven to a target): bisection on log sigma until the forget value accuracy of greedy replies
  reaches `target_accuracy` (e.g. the oracle's forget accuracy, the paper's "retained model" target).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from obliviate.core.errors import UsageError
from obliviate.engine.hooks import Guard
from obliviate.guards.base import GUARDS
from obliviate.guards.text_classifier import TfidfLogistic, fit_forget_gate, flag_rate

CORRUPTIONS = ("noise_first_k", "zero_top_k", "flip_top_k")


def corrupt(e: torch.Tensor, how: str, k: int, sigma: float, seed: int) -> torch.Tensor:
    """One prompt's token embeddings e [T, d] -> corrupted copy (see the module docstring)."""
    e = e.clone()
    if how == "noise_first_k":
        g = torch.Generator().manual_seed(seed)
        e[:, :k] += sigma * torch.randn(e.shape[0], min(k, e.shape[1]), generator=g).to(e.dtype).to(e.device)
    else:
        top = e.abs().topk(min(k, e.shape[1]), dim=-1).indices  # [T, k]
        vals = torch.zeros_like(top, dtype=e.dtype) if how == "zero_top_k" else -e.gather(-1, top)
        e.scatter_(-1, top, vals)
    return e


@GUARDS.register("eco")
@dataclass
class ECO(Guard):
    name = "eco"
    suite = "unlearning"
    description = "embedding-corrupted prompts behind a forget-prompt gate (Liu et al. 2024)"
    corruption: str = "noise_first_k"
    k: int = 1
    sigma: float = 0.0  # 0: found by search at fit time
    miss_rate: float = 0.01
    target_accuracy: float = 0.0  # forget value accuracy sigma is searched to (e.g. the oracle's)
    search_steps: int = 8
    threshold: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.corruption not in CORRUPTIONS:
            raise UsageError(f"eco: corruption must be one of {', '.join(CORRUPTIONS)}, got {self.corruption!r}")
        if self.k < 1 or not 0 < self.miss_rate < 1 or self.sigma < 0:
            raise UsageError("eco: k >= 1, 0 < miss_rate < 1, sigma >= 0")
        self._gate: TfidfLogistic | None = None

    # --- hooks ---
    def on_request(self, text):
        return float(self._gate.proba([text or ""])[0])

    def flagged(self, row) -> bool:
        return row.scores.get(self.name, 0.0) >= self.threshold

    def edit_embeddings(self, embeds, mask, rows):
        out = embeds
        for r, row in enumerate(rows):
            if not self.flagged(row):
                continue
            at = mask[r].bool()
            if out is embeds:
                out = embeds.clone()
            seed = int(hashlib.sha256(f"{self.seed}:{row.text}".encode()).hexdigest()[:8], 16)
            out[r, at] = corrupt(embeds[r, at], self.corruption, self.k, self.sigma, seed)
        return out

    # --- fitting ---
    @classmethod
    def fit(cls, model, tok, inputs, **options):
        guard = cls(**options)
        guard._gate, guard.threshold = fit_forget_gate(tok, inputs, guard.miss_rate, guard.seed, "eco")
        if guard.sigma == 0.0 and guard.corruption == "noise_first_k":
            guard.sigma = guard.search_sigma(model, tok, inputs["forget"])
        return guard

    def forget_accuracy(self, model, tok, items, sigma: float) -> float:
        from obliviate.engine.generation import generate
        from obliviate.models.encode import prompt_ids

        old, self.sigma = self.sigma, sigma
        try:
            outs = generate(
                model,
                tok,
                [prompt_ids(tok, it.question) for it in items],
                max_new_tokens=24,
                guards=[self],
                texts=[it.question for it in items],
            )
        finally:
            self.sigma = old
        hits = [bool(it.value) and it.value.lower() in o.lower() for it, o in zip(items, outs)]
        return sum(hits) / max(1, len(hits))

    def search_sigma(self, model, tok, items, lo: float = 1e-2, hi: float = 1e3) -> float:
        """Bisection on log sigma: the smallest sigma (within `search_steps` halvings of the log range) whose
        forget value accuracy is <= target_accuracy; `hi` if none is."""
        items = [it for it in items if it.value][:64]
        if not items:
            raise UsageError("eco: the forget items carry no `value` to search sigma against; give --option sigma=")
        self._search = []
        if self.forget_accuracy(model, tok, items, hi) > self.target_accuracy:
            return hi
        for _ in range(self.search_steps):
            mid = math.sqrt(lo * hi)
            acc = self.forget_accuracy(model, tok, items, mid)
            self._search.append((mid, acc))
            lo, hi = (lo, mid) if acc <= self.target_accuracy else (mid, hi)
        return hi

    def report(self, model, tok, inputs):
        def rate(items):
            return flag_rate(self._gate, self.threshold, items)

        out = {
            "threshold": self.threshold,
            "sigma": self.sigma,
            "gate_flag_rate_forget": rate(inputs.get("forget") or []),
            "gate_flag_rate_retain": rate(inputs.get("retain") or []),
            "gate_flag_rate_holdout": rate(inputs.get("holdout") or []),
        }
        if inputs.get("world_facts"):
            out["gate_flag_rate_world_facts"] = rate(inputs["world_facts"])
        return {k: v for k, v in out.items() if v is not None}

    def state(self):
        return {"gate": self._gate.state() if self._gate else None}

    def load_state(self, state):
        if state.get("gate"):
            self._gate = TfidfLogistic.from_state(state["gate"])
