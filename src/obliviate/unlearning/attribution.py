"""Data attribution for Datamodel Matching: predict, from the target model alone, its answer margins in a model
retrained without the forget set.

Georgiev et al. 2024, "Attribute-to-Delete: Machine Unlearning via Datamodel Matching" (arXiv 2410.23232), sec. 3:
DMM's oracle outputs are the target's outputs minus the attributed effect of the forget set,
f_oracle(x) ~= f(x) - sum_{j in F} beta_j(x) (their code: `DatamodelWrappedModel`, outputs minus the summed forget
rows of a TRAK/datamodel score matrix, times `dm_multiplier`). The scores here are TRAK's (Park et al. 2023, "TRAK:
Attributing Model Behavior at Scale", sec. 3, eq. 11-13; MadryLab/trak): a model linearised around its trained
weights, randomly projected per-example gradients, and one Newton step for removing a set of training items,

    step = (G^T G + lam I)^-1 sum_{j in F} g_j,        delta f(x) = <S grad f(x), step>,

with g_j = S grad L_j the sketched gradient of training item j's loss (summed answer-token NLL), S the projection
and lam a damping relative to the mean squared norm of the g_j. Removing F leaves the remaining loss's gradient at
-sum_F g_j, so the step moves along +sum_F g_j: the forget items' loss goes up and their margins down.

Where this differs from TRAK and its code:
- the Hessian is the item-level empirical Fisher G^T G of the loss gradients, which carries TRAK's Q = 1 - p weights
  inside each g_j; TRAK's Phi^T Phi of output (margin) gradients (`removal_effect(kernel="trak")`) predicted the
  world's forget margins worse (docs: the Datamodel Matching section); one model, no ensemble;
- the projection is a CountSketch (each coordinate to one of k buckets with a random sign; an unbiased
  inner-product sketch like TRAK's dense Rademacher projection, in O(d) per gradient and no d x k matrix), and the
  k x k system is solved through the N x N kernel when k > N;
- the outputs are the margins of every answer token (`obliviate.metrics.margins`), not class logits. Since
  <S grad f, step> = <grad f, S^T step>, one parameter direction S^T step gives every output's predicted change:
  a central difference along it (two forward passes over the items) predicts all tokens at once, where TRAK
  would need one projected gradient per output.
"""

from __future__ import annotations

import torch

from obliviate.core.errors import UsageError
from obliviate.metrics.margins import token_margins_torch
from obliviate.models.encode import collate, token_logps


def check_attribution(proj_dim: int, damping: float, kernel: str, what: str = "attribution") -> None:
    if proj_dim < 1:
        raise UsageError(f"{what}: proj_dim must be >= 1, got {proj_dim}")
    if not damping > 0:
        raise UsageError(f"{what}: damping must be > 0, got {damping}")
    if kernel not in ("fisher", "trak"):
        raise UsageError(f"{what}: kernel must be 'fisher' or 'trak', got {kernel!r}")


class CountSketch:
    """x [d] -> S x [k]: coordinate i goes to bucket h(i) with sign s(i) (seeded); E[<Sx, Sy>] = <x, y>."""

    def __init__(self, d: int, k: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.bucket = torch.randint(k, (d,), generator=gen)
        self.sign = torch.randint(2, (d,), generator=gen).float() * 2 - 1
        self.k = k

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.k, dtype=torch.float32).index_add_(0, self.bucket, x.float() * self.sign)

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        """S^T y [d]: the parameter direction whose inner product with any x is <S x, y>."""
        return y.float()[self.bucket] * self.sign


def newton_step(feats: torch.Tensor, v: torch.Tensor, damping: float) -> torch.Tensor:
    """(F^T F + lam I)^-1 v [k] in float64, lam = damping x the mean squared norm of F's rows [N, k]: the k x k
    solve when k <= N, else through the N x N kernel F F^T (Woodbury), so a wide sketch needs no k x k matrix."""
    F, v = feats.double(), v.double()
    n, k = F.shape
    lam = damping * (F**2).sum(1).mean().clamp(min=1e-30)
    if k <= n:
        return torch.linalg.solve(F.T @ F + lam * torch.eye(k, dtype=F.dtype), v)
    # (lam I + F^T F)^-1 v = (v - F^T (lam I + F F^T)^-1 F v) / lam
    return (v - F.T @ torch.linalg.solve(F @ F.T + lam * torch.eye(n, dtype=F.dtype), F @ v)) / lam


def removal_effect(
    G: torch.Tensor, Phi: torch.Tensor, forget: list[int], damping: float = 1e-3, kernel: str = "fisher"
) -> torch.Tensor:
    """Predicted change of every item's output [N] when the training items `forget` (rows of G) are removed:
    Phi (H + lam I)^-1 sum_{j in forget} G_j, H = F^T F with F = G ("fisher") or Phi ("trak") (`newton_step`)."""
    check_attribution(G.shape[1], damping, kernel)
    feats = G if kernel == "fisher" else Phi
    return (Phi.double() @ newton_step(feats, G.double()[forget].sum(0), damping)).float()


@torch.no_grad()
def token_margin_targets(model, encoded: list, pad_id: int, batch_size: int = 64) -> list[torch.Tensor]:
    """Each item's answer-token margins under `model` (a list of 1-D CPU tensors, one per item)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(encoded), batch_size):
        batch = {k: v.to(device) for k, v in collate(encoded[i : i + batch_size], pad_id).items()}
        logp, mask, _ = token_logps(model, batch)
        m = token_margins_torch(logp.float()).cpu()
        out.extend(m[b][mask[b].bool().cpu()] for b in range(len(m)))
    model.train(was_training)
    return out


def loss_gradients(model, encoded: list, pad_id: int, sketch: CountSketch) -> torch.Tensor:
    """The sketched gradient of each item's loss (summed answer NLL) [N, k]: one backward pass per item."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    was_training = model.training
    model.eval()
    G = []
    for item in encoded:
        batch = {k: v.to(device) for k, v in collate([item], pad_id).items()}
        logp, mask, _ = token_logps(model, batch)
        grads = torch.autograd.grad(-(logp * mask).sum(), params)
        G.append(sketch(torch.cat([g.reshape(-1) for g in grads]).cpu()))
    model.train(was_training)
    return torch.stack(G)


@torch.no_grad()
def directional_token_change(model, encoded: list, pad_id: int, direction: torch.Tensor, rel: float = 1e-3):
    """Each item's answer-token margins [T_i] and their directional derivative along `direction` (a flat vector
    over the trainable parameters): the central difference (m(theta + e d) - m(theta - e d)) / 2e, with e d a
    `rel` fraction of the weights' norm. One pair of forward passes gives every token's linear prediction."""
    params = [p for p in model.parameters() if p.requires_grad]
    pieces = list(torch.split(direction, [p.numel() for p in params]))
    norm = float(direction.norm())
    if norm == 0:
        base = token_margin_targets(model, encoded, pad_id)
        return base, [torch.zeros_like(m) for m in base]
    eps = rel * float(torch.sqrt(sum((p.float() ** 2).sum() for p in params))) / norm

    saved = [p.detach().clone() for p in params]  # restored exactly: theta + e d - e d rounds in float32

    def shifted(sign):
        for p, w, d in zip(params, saved, pieces):
            p.copy_(w + sign * eps * d.view_as(p).to(p.device, p.dtype))

    base = token_margin_targets(model, encoded, pad_id)
    shifted(1)
    up = token_margin_targets(model, encoded, pad_id)
    shifted(-1)
    down = token_margin_targets(model, encoded, pad_id)
    for p, w in zip(params, saved):
        p.copy_(w)
    return base, [(u - d) / (2 * eps) for u, d in zip(up, down)]


def predict_oracle_token_margins(
    model,
    encoded: list,
    forget: list[int],
    pad_id: int,
    *,
    proj_dim: int = 16384,
    damping: float = 1e-3,
    scale: float = 1.0,
    seed: int = 0,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The target's answer-token margins per item and their predicted values without the items `forget` (the
    target's training data is `encoded`): the Newton step (G^T G + lam I)^-1 sum_F g_j in sketch space, mapped back
    to the parameters by the sketch's transpose (so every output's predicted change is <S grad m, step>, as in
    `removal_effect`), then every answer token's change along it. `scale` multiplies the predicted change (the
    reference code's dm_multiplier)."""
    check_attribution(proj_dim, damping, "fisher")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UsageError("attribution: the model has no trainable parameters")
    sketch = CountSketch(sum(p.numel() for p in params), proj_dim, seed)
    G = loss_gradients(model, encoded, pad_id, sketch)
    direction = sketch.transpose(newton_step(G, G[forget].sum(0), damping).float())
    base, change = directional_token_change(model, encoded, pad_id, direction)
    return base, [m + scale * c for m, c in zip(base, change)]
