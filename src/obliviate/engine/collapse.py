"""The collapse alarm during training (`obliviate unlearn --stop-on-collapse`).

Every `every` optimiser steps the model answers the first `prompts` forget questions greedily (at most
`max_new_tokens` tokens); when the mean fluency of those answers (`obliviate.metrics.fluency`: 1 - seq-rep-2 over
words and symbols, 0 for an answer without a word) falls below `floor` (FLUENCY_FLOOR, 0.5), training stops after
that step and the run is saved as it stands, with the step and the figure in its train log. Only fluency: `unlearn`
has no oracle, so privleak, the other half of the alarm in `eval`, cannot be computed while training. The forget
prompts are the ones an over-unlearned model degenerates on first. Greedy decoding draws no random numbers, so a
run that never trips the alarm trains exactly as without it (world npo: the same figures, tests and docs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from obliviate.core.errors import UsageError
from obliviate.engine.generation import generate
from obliviate.metrics.fluency import FLUENCY_FLOOR, fluency
from obliviate.models.encode import prompt_ids


@dataclass
class CollapseMonitor:
    questions: list[str]  # the forget questions (the first `prompts` are asked)
    every: int = 10
    prompts: int = 8
    max_new_tokens: int = 32
    floor: float = FLUENCY_FLOOR
    checks: list[dict] = field(default_factory=list)  # {"step", "fluency"} per check
    reason: str | None = None  # set when it stopped training

    def __post_init__(self):
        if self.every < 1:
            raise UsageError(f"--collapse-every must be >= 1, got {self.every}")
        if self.prompts < 1 or self.max_new_tokens < 1 or not (0 < self.floor <= 1):
            raise ValueError("CollapseMonitor: prompts and max_new_tokens must be >= 1, floor in (0, 1]")
        if not [q for q in self.questions if q is not None]:
            raise UsageError("--stop-on-collapse asks forget questions: the forget set has none (raw documents)")

    def __call__(self, step: int, model, tokenizer) -> str | None:
        """The reason to stop after `step`, or None (also between checks)."""
        if step % self.every:
            return None
        asked = [q for q in self.questions if q is not None][: self.prompts]
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                answers = generate(model, tokenizer, [prompt_ids(tokenizer, q) for q in asked], self.max_new_tokens)
        finally:
            model.train(training)
        value = sum(map(fluency, answers)) / len(answers)
        self.checks.append({"step": step, "fluency": round(value, 4)})
        if value < self.floor:
            self.reason = f"forget fluency {value:.3f} < {self.floor} at step {step} (e.g. {answers[0][:60]!r})"
        return self.reason
