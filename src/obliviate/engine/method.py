"""The `Method` base class of training methods (unlearning and refusal) and the shared NLL losses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from obliviate.core.errors import UsageError
from obliviate.models.encode import sequence_logp


@dataclass
class Method:
    """Shared knobs. `lr` and `steps` are per-method defaults (tuned on the world); the CLI may override."""

    lr: float = 1e-3
    steps: int = 100
    retain_weight: float = 1.0  # alpha: weight of the retain term where a method has one

    needs: ClassVar[tuple[str, ...]] = ("forget", "retain")
    reference: ClassVar[tuple[str, ...]] = ()  # batch parts whose reference log-probs are precomputed
    live_reference: ClassVar[bool] = False  # True only when the math needs full reference distributions
    # True when `loss(batch)` is the sum over `needs` of `part_loss(name, batch[name])` and each part's term is a
    # mean over its answer tokens (`nll_loss`; `part_mean(name) == "token"`) or over its items ("item"). Then a
    # part's micro-batches combine exactly, each weighted by its share of the part's tokens or items
    # (TrainConfig.max_batch_tokens). `tests/unlearning/test_methods.py` checks the sum on every method that says so
    splits: ClassVar[bool] = False

    def __post_init__(self):
        if not self.lr > 0:
            raise UsageError(f"{type(self).__name__}: lr must be > 0, got {self.lr}")
        if self.steps < 1:
            raise UsageError(f"{type(self).__name__}: steps must be >= 1, got {self.steps}")
        if self.retain_weight < 0:
            raise UsageError(f"{type(self).__name__}: retain_weight must be >= 0")

    def loss(self, model, batch: dict, ref_model=None) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss over a batch, and its logs. By default the sum of the parts' terms (`part_loss`): a method that
        splits writes only `part_loss`; any other overrides this."""
        return self.sum_of_parts(model, batch, ref_model)

    def part_loss(self, model, name: str, part: dict, ref_model=None) -> tuple[torch.Tensor | None, dict]:
        """One part's weighted term of the loss, or None for a part that does not count (zero weight)."""
        raise NotImplementedError

    def part_mean(self, name: str) -> str:
        """ "token" or "item": what the `part_loss` of part `name` is a mean over."""
        return "token"

    def sum_of_parts(self, model, batch: dict, ref_model=None) -> tuple[torch.Tensor, dict[str, float]]:
        """`loss` for methods that `splits`: the sum of the parts' terms, and their logs."""
        total, logs = 0.0, {}
        for name in self.needs:
            term, part_logs = self.part_loss(model, name, batch.get(name), ref_model)  # None: a part left out
            if term is not None:
                total, logs = total + term, logs | part_logs
        return total, logs

    # Optional hooks for methods that are more than a loss (pruning, task arithmetic). No-ops by default.
    def prepare_targets(self, model, tokenizer, encoded: dict, pad_id: int) -> None:
        """Called once before training (after the reference log-probs, before `begin`), on the full model, with the
        encoded parts ({part: [(input_ids, labels), ...]}): for per-item targets (Oracle and Datamodel Matching).
        Every batch part carries `index` [B], its rows' positions in `encoded[part]`."""

    def begin(self, model) -> None:
        """Called once before training, on the full model (before any LoRA wrapping)."""

    def after_lora(self, model, batches, lora_scale: float) -> None:
        """Called once after LoRA wrapping (only with LoRA). `batches(part)` yields training batches of a part."""

    def after_step(self, model, step: int) -> None:
        """Called after every optimiser step (e.g. to re-apply a pruning mask)."""

    def finalize(self, model):
        """Called once after training, on the full model (LoRA merged). Returns the model to save."""
        return model

    @classmethod
    def from_options(cls, options: dict) -> "Method":
        from obliviate.core.options import cast_options

        return cls(**cast_options(cls, options, cls.__name__))


def nll_loss(seq_logp: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood over a batch: -sum_b log p(y_b|x_b) / sum_b |y_b|.

    seq_logp [B] (summed answer-token log-probs), n_tokens [B]. This is what HF's `outputs.loss` computes
    for a right-padded batch, i.e. the SFT loss that TOFU fine-tunes with.
    """
    return -seq_logp.sum() / n_tokens.sum().clamp(min=1)


def retain_nll(model, batch: dict) -> torch.Tensor:
    return nll_loss(*sequence_logp(model, batch["retain"]))
