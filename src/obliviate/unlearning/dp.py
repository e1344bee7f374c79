"""DP-SGD training with opacus: the first stage of DP2Unlearning (an (epsilon, delta)-DP target).

Al Mahmud, Jebreel, Domingo-Ferrer and Sanchez 2025, "DP2Unlearning: An Efficient and Guaranteed Unlearning
Framework for LLMs" (arXiv 2504.13774): train the model once on the full data under epsilon-DP ("unlearning-ready
training"); to unlearn, fine-tune that DP model on the retained data only (`methods/dp2unlearning.py`). Whatever the
forget data did to the DP model is bounded by (epsilon, delta), and the second stage never sees it, so the unlearned
model is a post-processing of an (epsilon, delta)-DP release with respect to the forget data. Reference code:
github.com/tamimalmahmud/DP2Unlearning, `Train_dp_SGD.py` (opacus `make_private_with_epsilon`, Poisson sampling,
SGD) and `FT_BaseModel.py` (the retain-only fine-tune).

DP-SGD (Abadi et al. 2016, Algorithm 1) as opacus runs it:
- Poisson sampling: each item joins each step's batch independently with probability q = 1 / ceil(N / batch_size)
  (opacus' DPDataLoader; expected batch size N q). The accounting for the subsampled Gaussian mechanism assumes it.
- per-sample gradients g_i, each clipped to norm <= C (`max_grad_norm`), summed, plus N(0, sigma^2 C^2 I) noise,
  divided by the expected batch size; the step is then taken by AdamW (post-processing: any optimiser keeps the
  guarantee). The reference code uses SGD; AdamW is what the world's targets train with.
- sigma (the noise multiplier) is the smallest that keeps the accountant's epsilon for (q, steps, delta) at or below
  the target epsilon (`opacus.accountants.utils.get_noise_multiplier`, what `make_private_with_epsilon` calls; here
  with the exact step count instead of epochs). The epsilon reported is the accountant's after training.
- accountant: RDP (Mironov 2017; opacus' `RDPAccountant`), an upper bound that is fast and deterministic; opacus'
  default PRV accountant is tighter by a little and numerically fussier at small step counts.
- delta defaults to 1e-5: it must be well below 1/N (a mechanism with delta = 1/N may publish one record in the
  clear); the built-in world has N ~ 1,000-2,000 training items, so 1e-5 is 50-200x below 1/N. A delta at or above
  1/N is allowed but warned about.
- per-sample gradients: opacus' hooks mode (`grad_sample_mode="hooks"`) on the unwrapped model
  (`wrap_model=False`). Linear and Embedding layers use opacus' closed-form samplers; a layer without one
  (LlamaRMSNorm: a weight and no buffers) falls back to opacus' functorch vmap of that layer alone; rotary
  embeddings hold a buffer but no parameters, so nothing is sampled there. tests/unlearning/test_dp.py checks every
  per-sample gradient against a one-item backward pass on a tiny Llama. Ghost clipping would need less memory
  but owns the loss; hooks keep obliviate's loss. Memory: one gradient per sampled item (a batch of B holds B copies
  of the parameters' gradients), which is why DP training is meant for the world's tiny targets.

Each item's loss is its mean answer-token NLL and the batch loss their mean (opacus' `loss_reduction="mean"`), so a
per-sample gradient is that one item's gradient, whatever the other items' lengths.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from obliviate.core.errors import UsageError
from obliviate.core.jsonio import write_json

DEFAULT_DELTA = 1e-5
DEFAULT_MAX_GRAD_NORM = 1.0
ACCOUNTANT = "rdp"
DP_RECORD = "dp.json"  # written into the DP-trained model's directory
EXTRA_HINT = "pip install 'obliviate[dp]'"


@dataclass
class DPConfig:
    """The privacy target of a DP-SGD run. `epsilon` inf: ordinary training (no DP, no opacus)."""

    epsilon: float
    delta: float = DEFAULT_DELTA
    max_grad_norm: float = DEFAULT_MAX_GRAD_NORM

    def __post_init__(self):
        if not self.epsilon > 0:  # also refuses NaN
            raise UsageError(f"--dp-epsilon must be > 0 (inf: no DP), got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise UsageError(f"--dp-delta must lie in (0, 1), got {self.delta}")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise UsageError(f"--dp-max-grad-norm must be a finite number > 0, got {self.max_grad_norm}")

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)


def require_opacus():
    """The opacus module; a UsageError naming the extra when it cannot be imported."""
    try:
        import opacus
    except ImportError:
        raise UsageError(f"--dp-epsilon needs opacus, which is not installed: {EXTRA_HINT}") from None
    return opacus


def sample_rate(n: int, batch_size: int) -> float:
    """Opacus' Poisson sampling rate for a DataLoader of `n` items in batches of `batch_size`: 1 / len(loader)."""
    return 1.0 / math.ceil(n / batch_size)


def noise_multiplier(dp: DPConfig, q: float, steps: int) -> float:
    """sigma that brings the accountant's epsilon after `steps` steps at rate `q` to at most `dp.epsilon`."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        return get_noise_multiplier(
            target_epsilon=dp.epsilon, target_delta=dp.delta, sample_rate=q, steps=steps, accountant=ACCOUNTANT
        )
    except ValueError as e:  # opacus: "The privacy budget is too low."
        raise UsageError(f"--dp-epsilon {dp.epsilon} at delta {dp.delta} over {steps} steps: {e}") from None


def make_private(model, n: int, dp: DPConfig, *, batch_size: int, steps: int, lr: float, seed: int):
    """Wrap `model` (trained in place) for DP-SGD over `n` items. Returns (engine, optimizer, loader, sigma, q): the
    loader yields index tensors of Poisson-sampled batches; the optimizer (opacus' DPOptimizer over AdamW) clips each
    per-sample gradient to dp.max_grad_norm, adds the noise and counts the step in engine.accountant."""
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    q = sample_rate(n, batch_size)
    sigma = noise_multiplier(dp, q, steps)
    engine = PrivacyEngine(accountant=ACCOUNTANT)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    loader = DataLoader(
        TensorDataset(torch.arange(n)), batch_size=batch_size, generator=torch.Generator().manual_seed(seed)
    )
    _, optimizer, loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=sigma,
        max_grad_norm=dp.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode="hooks",
        wrap_model=False,
        noise_generator=torch.Generator().manual_seed(seed + 1),
    )
    return engine, optimizer, loader, sigma, q


@contextmanager
def quiet():
    """Silence opacus' notes on its pseudo-random noise (no secure_mode) and on the RDP orders, and torch's on full
    backward hooks over inputs that need no gradient (token ids): expected here, and repeated every step."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(Secure RNG|Full backward hook|Optimal order).*")
        yield


def item_mean_nll(model, batch):
    """Mean over items of each item's mean answer-token NLL: the per-sample loss is one item's alone."""
    from obliviate.models.encode import sequence_logp

    logp, n_tokens = sequence_logp(model, batch)
    return (-logp / n_tokens.clamp(min=1)).mean()


def dp_train(
    model,
    tokenizer,
    pairs: list[tuple[str, str]],
    dp: DPConfig,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    warmup_steps: int = 0,
    max_len: int = 512,
) -> tuple[object, dict]:
    """DP-SGD fine-tuning of `model` on (question, answer) `pairs` for `steps` optimiser steps, each on a Poisson
    batch of expected size ~`batch_size`, with the engine's learning-rate schedule (warm-up, cosine). Returns the
    trained model (eval mode) and its record: the accountant's epsilon, delta, sigma, q, steps, ..."""
    import torch

    from obliviate.engine.numerics import flush_denormal, lr_at
    from obliviate.models.encode import collate, encode_pair

    require_opacus()
    if not dp.private:
        raise UsageError("dp_train needs a finite epsilon; epsilon inf is ordinary training")
    encoded = [encode_pair(tokenizer, q, a, max_len) for q, a in pairs]
    n = len(encoded)
    if n < 2:
        raise UsageError(f"DP-SGD needs at least 2 training items, got {n}")
    if dp.delta >= 1 / n:
        print(f"warning: --dp-delta {dp.delta} is not below 1/N = 1/{n}: the guarantee is weak", file=sys.stderr)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    with quiet():
        engine, optimizer, loader, sigma, q = make_private(
            model, n, dp, batch_size=batch_size, steps=steps, lr=lr, seed=seed
        )
    params = [p for p in model.parameters() if p.requires_grad]
    pad = tokenizer.pad_token_id
    t0, done, losses = time.perf_counter(), 0, []
    with flush_denormal(), quiet():
        while done < steps:
            for (idx,) in loader:
                if done == steps:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(done, lr, warmup_steps, steps)
                optimizer.zero_grad(set_to_none=True)
                if len(idx):
                    batch = {k: v.to(device) for k, v in collate([encoded[i] for i in idx], pad).items()}
                    loss = item_mean_nll(model, batch)
                    loss.backward()
                    losses.append(loss.item())
                else:  # an empty Poisson batch still takes its noise-only step, and the accountant counts it
                    for p in params:
                        p.grad_sample = torch.zeros((1, *p.shape), dtype=p.dtype, device=p.device)
                optimizer.step()
                done += 1
    seconds = time.perf_counter() - t0
    with quiet():
        epsilon = engine.accountant.get_epsilon(delta=dp.delta)
    model.eval()
    for p in params:  # the hooks' leftovers are no part of the model
        p.grad_sample = None
    record = {
        "epsilon": epsilon,
        "target_epsilon": dp.epsilon,
        "delta": dp.delta,
        "noise_multiplier": sigma,
        "max_grad_norm": dp.max_grad_norm,
        "sample_rate": q,
        "expected_batch_size": n * q,
        "steps": steps,
        "train_items": n,
        "accountant": ACCOUNTANT,
        "poisson_sampling": True,
        "grad_sample_mode": "hooks",
        "final_loss": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 6),
        "seconds": round(seconds, 3),
    }
    return model, record


def write_dp_record(model_dir: Path, record: dict) -> None:
    write_json(Path(model_dir) / DP_RECORD, record)


def read_dp_record(model_dir: str | Path) -> dict | None:
    """MODEL_DIR/dp.json, or None when it is absent or unreadable."""
    path = Path(model_dir) / DP_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def dp_line(record: dict) -> str:
    """One line for the CLI: the accountant's epsilon and the mechanism's parameters."""
    return (
        f"DP-SGD: epsilon {record['epsilon']:.3f} (target {record['target_epsilon']:g}, {record['accountant']} "
        f"accountant) at delta {record['delta']:g}; noise multiplier {record['noise_multiplier']:.4f}, "
        f"max grad norm {record['max_grad_norm']:g}, Poisson sampling rate {record['sample_rate']:.4f}, "
        f"{record['steps']} steps"
    )
