"""GUARD: generation-time unlearning by restriction and detection (Deng et al. 2025, "GUARD: Generation-time LLM
Unlearning via Adaptive Restriction and Detection", arXiv:2505.13312).

No weight changes. For a prompt the gate flags as touching the forget target, decoding is kept away from the
target's answers:

- Gate: character n-gram TF-IDF + logistic regression on forget versus retain questions, with a split-conformal
  threshold at `miss_rate` (as ECO's; the paper uses a prompt classifier too).
- Forbidden token sequences: drawn from the forget answers. Items with an attribute `value` give the value's
  tokens (with and without a leading space); otherwise each forget answer's words that no retain answer contains
  (the paper extracts keywords of the forget set).
- Token matching (the paper's hard restriction): if the reply so far ends with the first j tokens of a forbidden
  sequence (j = 0 included), the sequence's next token gets `-token_penalty` added to its logit.
- Semantic matching (the paper's soft restriction): each of the `top_m` candidates whose input embedding has
  cosine similarity s >= `sim_threshold` with a token that token matching penalises gets `-semantic_penalty * s`.

`process_logits` works row by row on [B, V] logits with the reply's ids, so it serves greedy decoding and, through
`logits_processor()`, transformers' beam search, whose beams are rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from obliviate.engine.hooks import Guard
from obliviate.guards.base import GUARDS
from obliviate.guards.text_classifier import TfidfLogistic, fit_forget_gate, flag_rate


@GUARDS.register("guard")
@dataclass
class GuardDecoding(Guard):
    name = "guard"
    suite = "unlearning"
    description = "forbidden-sequence token and semantic penalties while decoding (Deng et al. 2025)"
    token_penalty: float = 100.0
    semantic_penalty: float = 10.0
    sim_threshold: float = 0.9
    top_m: int = 20
    miss_rate: float = 0.01
    threshold: float = 0.5
    seed: int = 0

    def __post_init__(self):
        self._gate: TfidfLogistic | None = None
        self._seqs: list[list[int]] = []
        self._emb = None  # [V, d] normalised input embeddings, for semantic matching

    def attach(self, model, tok):
        e = model.get_input_embeddings().weight.detach().float()
        self._emb = torch.nn.functional.normalize(e, dim=-1)

    # --- hooks ---
    def on_request(self, text):
        return float(self._gate.proba([text or ""])[0])

    def banned(self, reply: list[int]) -> set[int]:
        """Next tokens that would extend a forbidden sequence the reply currently ends in (j = 0 included)."""
        out = set()
        for s in self._seqs:
            for j in range(len(s)):
                if j == 0 or (len(reply) >= j and reply[-j:] == s[:j]):
                    out.add(s[j])
        return out

    def penalise(self, reply: list[int], logits: torch.Tensor) -> torch.Tensor:
        """logits [V] of one row -> penalised copy."""
        ban = sorted(self.banned(reply))
        if not ban:
            return logits
        logits = logits.clone()
        ban_t = torch.tensor(ban, device=logits.device)
        if self.semantic_penalty > 0 and self._emb is not None:
            cand = logits.topk(min(self.top_m, logits.shape[-1])).indices
            sim = (self._emb[cand.cpu()] @ self._emb[ban_t.cpu()].T).max(-1).values.to(logits.device)  # [m]
            hit = sim >= self.sim_threshold
            logits[cand[hit]] -= self.semantic_penalty * sim[hit].to(logits.dtype)
        logits[ban_t] -= self.token_penalty
        return logits

    def process_logits(self, step, ids, logits, rows):
        out = logits
        for r, row in enumerate(rows):
            if row.scores.get(self.name, 0.0) >= self.threshold:
                if out is logits:
                    out = logits.clone()
                out[r] = self.penalise(ids[r].tolist(), logits[r])
        return out

    def logits_processor(self, prompt_len: int, flagged: list[bool], num_beams: int = 1):
        """A transformers LogitsProcessor applying the penalties to rows of flagged prompts (beams are rows:
        prompt b's beams are rows b * num_beams ... (b + 1) * num_beams - 1)."""
        from transformers import LogitsProcessor

        guard = self

        class _Processor(LogitsProcessor):
            def __call__(self, input_ids, scores):
                for r in range(scores.shape[0]):
                    if flagged[r // num_beams]:
                        scores[r] = guard.penalise(input_ids[r, prompt_len:].tolist(), scores[r])
                return scores

        return _Processor()

    # --- fitting ---
    @staticmethod
    def forbidden_texts(forget, retain) -> list[str]:
        values = sorted({it.value for it in forget if it.value})
        if values:
            return values
        seen = {w.lower() for it in retain for w in re.findall(r"\w+", it.answer)}
        return sorted(
            {w for it in forget for w in re.findall(r"\w+", it.answer) if w.lower() not in seen and len(w) > 2}
        )

    @classmethod
    def fit(cls, model, tok, inputs, **options):
        guard = cls(**options)
        guard._gate, guard.threshold = fit_forget_gate(tok, inputs, guard.miss_rate, guard.seed, "guard")
        forget = inputs.get("forget") or []
        retain = inputs.get("retain_train") or inputs.get("retain") or []
        seqs = set()
        for t in cls.forbidden_texts(forget, retain):
            for variant in (t, " " + t):
                ids = tok(variant, add_special_tokens=False)["input_ids"]
                if ids:
                    seqs.add(tuple(ids))
        guard._seqs = [list(s) for s in sorted(seqs)]
        return guard

    def report(self, model, tok, inputs):
        out = {
            "threshold": self.threshold,
            "forbidden_sequences": float(len(self._seqs)),
            "gate_flag_rate_forget": flag_rate(self._gate, self.threshold, inputs.get("forget") or []),
            "gate_flag_rate_retain": flag_rate(self._gate, self.threshold, inputs.get("retain") or []),
        }
        return {k: v for k, v in out.items() if v is not None}

    def state(self):
        return {"gate": self._gate.state() if self._gate else None, "sequences": self._seqs}

    def load_state(self, state):
        if state.get("gate"):
            self._gate = TfidfLogistic.from_state(state["gate"])
        seqs = state.get("sequences", [])
        if not isinstance(seqs, list) or not all(
            isinstance(q, list) and all(type(t) is int and t >= 0 for t in q) for q in seqs
        ):
            raise ValueError("'sequences' must be a list of token-id lists")
        self._seqs = [list(q) for q in seqs]
