"""KLoM (KL divergence of margins) and forget quality against a distribution of oracles.

Georgiev, Rinberg, Park, Garg, Ilyas, Madry and Neel 2024, "Attribute-to-Delete: Machine Unlearning via Datamodel
Matching" (arXiv 2410.23232, sec. 3 and app. E.1): unlearning should leave a model whose outputs are statistically
indistinguishable from retraining without the forget set. For each evaluation item x, KLoM compares two
distributions of x's margin (`obliviate.metrics.margins.item_margin`): over the unlearned models (one per unlearning
seed) and over the oracles (retrained without the forget set, one per training seed). Reference code: the KLoM
evaluation of EasyDUB (github.com/RoyRin/data-unlearning-bench, `unlearning_bench/eval.py` `compute_binned_KL_div`,
`kl_from_margins`; `run.py` `load_klom`), by two of the paper's authors. Our estimator follows it:

- clip both samples of margins to [-100, 100];
- 20 equal-width bins spanning the pooled range of both samples (one bin of width 1 when all values are equal);
- bin frequencies p (oracles) and q (unlearned models); q is floored at 1e-5 in the bins where p > 0, q is
  renormalised, and KLoM(x) = sum_b p_b log(p_b / q_b) (natural log).

Where the code and the paper differ we follow the code, and say so:
- direction: the paper writes D_KL(unlearned || oracle); `load_klom` calls `kl_from_margins(oracle_margins,
  margins)` into parameters named (unlearned, oracle), so the code computes D_KL(oracle || unlearned). We compute
  D_KL(oracles || unlearned): it is large when the unlearned models put little mass where the oracles' margins lie.
- one departure from the code: `np.digitize` there drops a sample equal to the top bin edge (the pooled maximum),
  which turns a one-model-per-side comparison into 0 whatever the margins. We count it in the last bin (the closed
  last bin of `np.histogram`).

Summary per split (the paper's figures): the 95th percentile of KLoM over the split's items; lower is better, 0
means the two histograms coincide. Sample sizes: the paper and the code use equal numbers of unlearned models and
oracles (100 each on CIFAR-10); we accept any, but KLoM is reported only with at least 2 oracles (a distribution).
With one unlearned model (one seed) q is a single spike, so KLoM(x) is near log(1e5) = 11.5 times the oracles' mass
outside that bin: compare rows with the same number of seeds.

`forget_quality_pooled`: TOFU's forget quality (`metrics.tofu.forget_quality`, a two-sample KS test of forget-set
truth ratios) between a run's models' pooled ratios and every oracle's pooled ratios. The pooled samples repeat
items across models, so the p-value is a similarity score, not an exact test level.
"""

from __future__ import annotations

import math

import numpy as np

from obliviate.metrics import METRICS, metric
from obliviate.metrics.margins import item_margin
from obliviate.metrics.tofu import _ratios, forget_quality

BINS = 20
EPS = 1e-5
CLIP = 100.0
PERCENTILE = 95.0
KLOM_SPLITS = ("forget", "retain", "holdout")
MIN_ORACLES = 2


def binned_kl(p_samples, q_samples, bins: int = BINS, eps: float = EPS, clip: float = CLIP) -> float:
    """D_KL(P || Q) between two 1-D samples through shared equal-width histograms (see the module docstring)."""
    p = np.clip(np.asarray(p_samples, dtype=float), -clip, clip)
    q = np.clip(np.asarray(q_samples, dtype=float), -clip, clip)
    lo, hi = min(p.min(), q.min()), max(p.max(), q.max())
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    pp = np.histogram(p, edges)[0] / p.size
    qq = np.histogram(q, edges)[0] / q.size
    qq = np.where(pp > 0, np.maximum(qq, eps), qq)
    qq = qq / qq.sum()
    keep = pp > 0
    return float(np.sum(pp[keep] * np.log(pp[keep] / qq[keep])))


def klom_items(unlearned: np.ndarray, oracles: np.ndarray, **kw) -> np.ndarray:
    """KLoM of every item: `unlearned` [S models, N items] and `oracles` [K models, N items] margins -> [N]."""
    unlearned, oracles = np.atleast_2d(unlearned), np.atleast_2d(oracles)
    if unlearned.shape[1] != oracles.shape[1]:
        raise ValueError(f"margins of {unlearned.shape[1]} and {oracles.shape[1]} items")
    return np.array([binned_kl(oracles[:, i], unlearned[:, i], **kw) for i in range(oracles.shape[1])])


def klom_summary(values) -> float:
    """The paper's summary of a split's per-item KLoM: its 95th percentile."""
    return float(np.percentile(np.asarray(values, dtype=float), PERCENTILE))


def split_margins(models: list[dict], split: str) -> np.ndarray:
    """[models, items] answer margins of one split, from `engine.evaluate` rows ({split: rows} per model)."""
    return np.array([[item_margin(r["token_logps"]) for r in m[split]] for m in models], dtype=float)


def _klom(ctx: dict, split: str) -> float | None:
    runs, oracles = ctx["run_models"], ctx["oracle_models"]
    if len(oracles) < MIN_ORACLES or not all(m.get(split) for m in (*runs, *oracles)):
        return None
    u, o = split_margins(runs, split), split_margins(oracles, split)
    keep = ~(np.isnan(u).any(0) | np.isnan(o).any(0))  # an empty answer has no margin
    return klom_summary(klom_items(u[:, keep], o[:, keep])) if keep.any() else None


for _split in KLOM_SPLITS:
    metric(
        f"klom_{_split}",
        False,
        ("run_models", "oracle_models"),
        f"KLoM: 95th percentile over {_split} items of KL(oracles' margins || the run's models' margins), binned",
    )(lambda ctx, split=_split: _klom(ctx, split))


@metric(
    "forget_quality_pooled",
    True,
    ("run_models", "oracle_models"),
    "forget quality (KS p-value of forget truth ratios) of the run's models pooled against all oracles pooled",
)
def _forget_quality_pooled(ctx) -> float | None:
    runs, oracles = ctx["run_models"], ctx["oracle_models"]
    if len(oracles) < MIN_ORACLES or not all(m.get("forget") for m in (*runs, *oracles)):
        return None
    pooled = [np.concatenate([_ratios(m["forget"]) for m in ms]) for ms in (runs, oracles)]
    return forget_quality(*pooled)


DISTRIBUTION_METRICS = (*(f"klom_{s}" for s in KLOM_SPLITS), "forget_quality_pooled")


def distribution_metrics(run_models: list[dict], oracle_models: list[dict]) -> dict[str, float]:
    """KLoM per split and pooled forget quality of one run (its models' rows, one per unlearning seed) against the
    oracles' rows; empty with fewer than 2 oracles."""
    ctx = {"run_models": list(run_models), "oracle_models": list(oracle_models)}
    out = {}
    for name in DISTRIBUTION_METRICS:
        value = METRICS.get(name).fn(ctx)
        if value is not None and not math.isnan(value):
            out[name] = float(value)
    return out


def mean_metrics(per_model: list[dict]) -> dict[str, float]:
    """A run of several models (unlearning seeds): the mean of each figure every model has."""
    keys = [k for k in per_model[0] if all(k in m for m in per_model)]
    return {k: float(np.mean([m[k] for m in per_model])) for k in keys}
