"""Refusal-token threshold as a guard (Jain et al. 2024, "Refusal Tokens: A Simple Way to Calibrate Refusals in
Large Language Models", arXiv:2412.06748, Sec. 3 "thresholding"), for models trained with
`obliviate align refusal_tokens`.

At the first generated position, p_refuse = the softmax(logits / temperature) mass of the refusal tokens. If
p_refuse > tau the most likely refusal token is forced, else `[respond]`; greedy decoding continues from there, so
the model writes its own refusal or answer. On a plain prompt this is exactly `ThresholdGenerator` (test). Under a
prefill the guard decides after the prefilled text (it sits in the decode loop), where `ThresholdGenerator`
decides on the prompt alone and puts the prefill after the control token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obliviate.core.errors import UsageError
from obliviate.engine.hooks import Guard
from obliviate.guards.base import GUARDS


@GUARDS.register("refusal_token")
@dataclass
class RefusalTokenThreshold(Guard):
    name = "refusal_token"
    description = "refusal-token threshold at the first reply position (Jain et al. 2024)"
    tau: float = 0.5
    temperature: float = 1.0

    def __post_init__(self):
        if not 0 <= self.tau <= 1 or self.temperature <= 0:
            raise UsageError("refusal_token: tau in [0, 1] and temperature > 0")
        self._respond, self._refuse = None, []

    def attach(self, model, tok):
        from obliviate.models.control_tokens import control_ids

        self._respond, self._refuse = control_ids(tok)
        if self._respond is None or not self._refuse:
            raise UsageError(
                "guard refusal_token: this model has no refusal tokens; train one with `obliviate align refusal_tokens`"
            )

    @classmethod
    def fit(cls, model, tok, inputs, **options):  # nothing learned: tau and temperature are options
        guard = cls(**options)
        guard.attach(model, tok)
        return guard

    def process_logits(self, step, ids, logits, rows):
        if step != 0:
            return logits
        p = torch.softmax(logits / self.temperature, -1)[:, self._refuse].sum(-1)  # [B]
        refuse = torch.tensor(self._refuse, device=logits.device)
        best = refuse[logits[:, refuse].argmax(-1)]
        choice = torch.where(p > self.tau, best, torch.full_like(best, self._respond))
        for r, row in enumerate(rows):
            row.scores[self.name] = float(p[r])
        out = torch.full_like(logits, float("-inf"))
        out[torch.arange(len(rows)), choice] = 0.0
        return out
