"""Oracle Matching (OM): fine-tune the target toward the outputs of a model retrained without the forget set.

Georgiev et al. 2024, "Attribute-to-Delete: Machine Unlearning via Datamodel Matching" (arXiv 2410.23232), sec. 3,
Algorithm 1 with the oracle's outputs in place of the datamodel's: on a mix of forget items and retain items,
minimise the squared error between the model's outputs and the oracle's,

    L(theta) = E_{x in S_F u S_R} || f_theta(x) - f_oracle(x) ||^2 ,

the paper's upper bound for Datamodel Matching (which predicts f_oracle; `dmm`). The reference code (MadryLab's
`oracle_matching` / `finetune`: `mse_loss(oracle_logits, logits)` over one loader of the forget indices plus
3 x |F| random retain indices, Adam, no weight decay by default) matches a classifier's logits.

Our adaptation to language models: the output is the margin of every answer token, m_t = log p - log(1 - p)
(`obliviate.metrics.margins.token_margins_torch`, the classifier margin of the paper's sec. 2 taken per token), and
the loss is a weighted sum of the two parts' token means,

    forget_weight * mean_{t in forget answers} (m_t - m_t^oracle)^2 + retain_weight * mean_{t in retain} (...)^2,

instead of one mean over a shuffled mix: batches here hold a forget and a retain part (32 items each by default;
the code's 1:3 mix is retain_weight = 3). The oracle's token margins are computed once before training
(`Method.prepare_targets`), so only one model is in memory while training. The code averages several oracles' logits; here
one oracle directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from obliviate.core.errors import UsageError
from obliviate.engine.method import Method
from obliviate.metrics.margins import token_margins_torch
from obliviate.models.encode import token_logps
from obliviate.models.load import load_model
from obliviate.unlearning.attribution import token_margin_targets
from obliviate.unlearning.methods import METHODS


def matching_loss(logp: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over answer tokens (mask 1) of (m_t - target_t)^2, m_t the token margin of logp [B, S]."""
    err = (token_margins_torch(logp) - target) ** 2
    return (err * mask).sum() / mask.sum().clamp(min=1)


@dataclass
class MarginMatching(Method):
    """The matching loss over per-item target margins that `prepare` sets (`self._targets[part][item]`)."""

    lr: float = 1e-3
    steps: int = 100
    forget_weight: float = 1.0
    retain_weight: float = 1.0

    splits: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        if self.forget_weight < 0:
            raise UsageError(f"{type(self).__name__}: forget_weight must be >= 0")

    def part_loss(self, model, name, part, ref_model=None):
        weight = self.forget_weight if name == "forget" else self.retain_weight
        if weight == 0:
            return None, {}
        logp, mask, _ = token_logps(model, part)
        rows = [self._targets[name][int(i)] for i in part["index"]]
        target = torch.zeros_like(logp)
        target[mask.bool()] = torch.cat(rows).to(logp.device, logp.dtype)  # row-major: row b's answer tokens
        loss = matching_loss(logp, mask, target)
        return weight * loss, {f"{name}_sq_err": loss.item()}

    def finalize(self, model):
        self.__dict__.pop("_targets", None)  # tensors: not options, and not for unlearn.json
        return model


@METHODS.register("oracle_matching")
@dataclass
class OracleMatching(MarginMatching):
    # tuned on the world (forget10), see the Datamodel Matching docs section
    lr: float = 1e-3
    steps: int = 100
    oracle: str = ""  # an HF model directory retrained without the forget set (`obliviate finetune`: OUT/oracle)

    def __post_init__(self):
        super().__post_init__()
        if self.oracle and not (Path(self.oracle) / "config.json").is_file():
            raise UsageError(f"oracle_matching option oracle={self.oracle}: not a model directory (no config.json)")

    @classmethod
    def from_options(cls, options: dict) -> "OracleMatching":
        method = super().from_options(options)
        method.require_oracle()
        return method

    def require_oracle(self) -> None:
        if not self.oracle:
            raise UsageError(
                "oracle_matching needs --option oracle=DIR: a model retrained without the forget set "
                "(`obliviate finetune` writes OUT/oracle)"
            )

    def prepare_targets(self, model, tokenizer, encoded, pad_id):
        self.require_oracle()
        oracle, oracle_tok = load_model(self.oracle, require_chat_template=False)
        if oracle_tok.get_vocab() != tokenizer.get_vocab():
            raise UsageError(f"oracle_matching option oracle={self.oracle}: its tokenizer differs from the model's")
        oracle.to(next(model.parameters()).device)
        self._targets = {name: token_margin_targets(oracle, encoded[name], pad_id) for name in self.needs}
        del oracle
