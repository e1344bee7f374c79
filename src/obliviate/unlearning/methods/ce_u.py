"""CE-U: cross-entropy unlearning.

Bo Yang 2025, "CE-U: Cross Entropy Unlearning" (arXiv 2503.01224): the target distribution at each answer
position is the model's own (detached) softmax with the true token's logit set to -inf,
    q_t = softmax(z_t.detach() with z_t[y_t] = -inf),   L = mean_t CE(z_t, q_t),
so the gradient on the logits is softmax(z_t) - q_t: the true token goes to 0 and the other tokens keep their
ratios. As in the author's code the first answer token is not trained (`ignore_first_n_answer_tokens` = 1),
and there is no reference model. The paper has no retain term; our tuned default adds one (see below).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obliviate.engine.method import Method, retain_nll
from obliviate.unlearning.methods import METHODS
from obliviate.unlearning.methods._token import answer_logits, masked_mean


def ce_u_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V], targets [B, T], mask [B, T]."""
    masked = logits.detach().scatter(-1, targets.unsqueeze(-1), float("-inf"))
    q = torch.softmax(masked, -1)
    ce = -(q * torch.log_softmax(logits, -1)).nan_to_num(0.0).sum(-1)  # 0 * -inf at the true token -> 0
    return masked_mean(ce, mask)


def drop_first_answer_tokens(mask: torch.Tensor, n: int) -> torch.Tensor:
    """Zero the first n answer positions of every row of a [B, T] answer mask."""
    return mask * (mask.cumsum(-1) > n).float()


@METHODS.register("ce_u")
@dataclass
class CEU(Method):
    lr: float = 3e-4
    steps: int = 100
    # The paper has no retain term; on the world, CE-U alone drives utility to ~0 at every lr tried
    # (1e-4..1e-3), so the tuned default adds a retain NLL (world forget10: FQ 8e-6 at 0.97x utility).
    retain_weight: float = 1.0
    ignore_first_n_answer_tokens: int = 1

    def loss(self, model, batch, ref_model=None):
        logits, targets, mask = answer_logits(model, batch["forget"])
        forget = ce_u_loss(logits, targets, drop_first_answer_tokens(mask, self.ignore_first_n_answer_tokens))
        logs = {"ce_u": forget.item()}
        if self.retain_weight > 0:
            retain = retain_nll(model, batch)
            logs["retain_nll"] = retain.item()
            return forget + self.retain_weight * retain, logs
        return forget, logs
