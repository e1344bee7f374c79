"""Sparsity-aware unlearning (Jia et al. 2023, "Model Sparsity Can Simplify Machine Unlearning").

Two methods on top of a GradDiff objective (-NLL_forget + alpha * NLL_retain):

- `l1_sparse` (sec. 4, eq. 4): add gamma_t * ||theta||_1 with the linearly decaying schedule the paper finds
  best, gamma_t = gamma * (1 - t / T). The norm is divided by the number of parameters (a mean absolute weight)
  so that one gamma means the same across model sizes; the paper's gamma is per-sum, i.e. ours * n_params.
- `prune_unlearn` (sec. 3, "prune first, then unlearn"): one-shot magnitude pruning of a `sparsity` share of
  every 2-D weight matrix (per layer, smallest |w| first; on a mixture of experts also each expert's matrix in
  the fused [E, ., .] tensors), then unlearning with the mask kept fixed: pruned weights are zeroed again after
  every step and after LoRA is merged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obliviate.core.errors import UsageError
from obliviate.engine.method import Method, nll_loss
from obliviate.models.encode import sequence_logp
from obliviate.unlearning.methods import METHODS
from obliviate.unlearning.methods.grad_diff import grad_diff_loss


def l1_penalty(params: list[torch.Tensor], gamma: float) -> torch.Tensor:
    """gamma * mean |theta| over all given parameters."""
    total = sum(p.abs().sum() for p in params)
    count = sum(p.numel() for p in params)
    return gamma * total / count


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping the (1 - sparsity) share of entries with the largest |w| (ties broken by order)."""
    k = int(round(sparsity * weight.numel()))
    mask = torch.ones_like(weight, dtype=torch.bool)
    if k > 0:
        idx = weight.detach().abs().flatten().argsort()[:k]
        mask.view(-1)[idx] = False
    return mask


def _grad_diff(model, batch, alpha):
    forget = nll_loss(*sequence_logp(model, batch["forget"]))
    retain = nll_loss(*sequence_logp(model, batch["retain"]))
    return grad_diff_loss(forget, retain, 1.0, alpha), {"forget_nll": forget.item(), "retain_nll": retain.item()}


@METHODS.register("l1_sparse")
@dataclass
class L1Sparse(Method):
    lr: float = 1e-4  # as grad_diff (world forget10: FQ 0.08 at 0.76x; 5e-5 forgets too little)
    steps: int = 100
    retain_weight: float = 1.0
    gamma: float = 1e-2  # initial l1 weight (on the mean |w|), decays linearly to 0

    def loss(self, model, batch, ref_model=None):
        loss, logs = _grad_diff(model, batch, self.retain_weight)
        gamma_t = self.gamma * (1 - getattr(self, "step", 0) / getattr(self, "total_steps", self.steps))
        l1 = l1_penalty([p for p in model.parameters() if p.requires_grad], gamma_t)
        return loss + l1, logs | {"l1": l1.item()}


@METHODS.register("prune_unlearn")
@dataclass
class PruneUnlearn(Method):
    lr: float = 1e-4  # tuned on the world (forget10, sparsity 0.2): FQ 0.016 at 0.88x target utility
    steps: int = 100
    retain_weight: float = 1.0
    sparsity: float = 0.2  # share of each weight matrix pruned before unlearning

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.sparsity < 1:
            raise UsageError(f"prune_unlearn: sparsity must be in [0, 1), got {self.sparsity}")

    def begin(self, model) -> None:
        from obliviate.models.anatomy import is_fused_experts, num_experts

        n_exp = num_experts(model)
        self._masks = {}
        with torch.no_grad():
            for n, p in model.named_parameters():
                # a MoE's fused experts [E, ., .] (transformers 5): each expert's matrix is pruned on its own
                fused = is_fused_experts(p, n_exp)
                if (p.dim() == 2 or fused) and "embed" not in n:  # linear layers; embeddings stay dense
                    self._masks[n] = (
                        torch.stack([magnitude_mask(x, self.sparsity) for x in p])
                        if fused
                        else magnitude_mask(p, self.sparsity)
                    )
                    p.mul_(self._masks[n])

    def _apply(self, model) -> None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                key = n.replace("base_model.model.", "").replace(".base_layer", "")
                if key in self._masks and p.shape == self._masks[key].shape:
                    p.mul_(self._masks[key].to(p.device))

    def loss(self, model, batch, ref_model=None):
        return _grad_diff(model, batch, self.retain_weight)

    def after_step(self, model, step: int) -> None:
        self._apply(model)

    def finalize(self, model):
        self._apply(model)
        return model
