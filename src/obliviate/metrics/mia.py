"""Membership-inference attacks (forget = members vs holdout = non-members) and MUSE's privleak.

Each score is oriented so that HIGHER means "more likely a training member"; AUC is sklearn's ROC AUC with
forget labelled 1. A model that never saw the forget set scores about 0.5, the fully trained target near 1.

- LOSS (Yeom et al. 2018, "Privacy Risk in Machine Learning"): score = -mean token NLL.
- zlib (Carlini et al. 2021, "Extracting Training Data from Large Language Models", sec. 5.1):
  score = -NLL / zlib entropy, where the entropy is the zlib-compressed length in bytes of the text.
- Min-K% (Shi et al. 2024, "Detecting Pretraining Data from LLMs", eq. 2): mean log-prob of the k% least
  likely tokens (k = 0.4 by default, as in MUSE).
- Min-K%++ (Zhang et al. 2025, "Min-K%++", eq. 4): per token (log p(x_t) - mu_t) / sigma_t with mu_t,
  sigma_t the mean and std of log p(z) over z ~ p(.|x_<t); then the mean of the k% lowest.
- Reference (Carlini et al. 2022, "Membership Inference Attacks From First Principles", sec. IV-B's calibration
  baseline; Watson et al. 2022, "On the Importance of Difficulty Calibration in Membership Inference Attacks",
  eq. 2): the LOSS score calibrated by a reference model's, score = -NLL(model) + NLL(reference). The reference
  is the oracle, the model trained without the forget set, as in OpenUnlearning's `mia_reference` (its config
  points `reference_model_path` at a retain-only model); the oracle scores every item 0, AUC 0.5.
- GradNorm (Wang et al. 2024, "Pandora's White-Box: Precise Training Data Detection and Extraction in Large
  Language Models", sec. 4; the gradient-norm attack of OpenUnlearning's `mia/gradnorm.py`): score = -|g|, the
  gradient of the item's mean answer NLL with respect to the weights; members sit near a minimum of the loss, so
  their gradients are small. Following OpenUnlearning's code, |g| is the mean over the parameter tensors of each
  tensor's 2-norm (not one global norm), taken with dropout off. It needs a backward pass per item: the rows
  carry `grad_norm` only when the evaluation was asked for it (`score_model(..., grad_norm=True)`), and the
  metric is absent otherwise.
- privleak (Shi et al. 2025, "MUSE", sec. 3.3): (AUC'(model) - AUC'(oracle)) / AUC'(oracle) * 100, with
  AUC' = 1 - AUC in our orientation: MUSE reports the AUC the other way round, as OpenUnlearning's code
  notes. Under-unlearning gives about -100, the oracle 0, over-unlearning positive values. It uses Min-K%.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
from sklearn.metrics import roc_auc_score

from obliviate.metrics import metric

MIN_K = 0.4


def loss_score(token_logps: list[float]) -> float:
    return float(np.mean(token_logps))


def zlib_score(token_logps: list[float], text: str) -> float:
    nll = -float(np.mean(token_logps))
    return -nll / len(zlib.compress(text.encode("utf-8")))


def mink_score(token_logps: list[float], k: float = MIN_K) -> float:
    x = np.sort(np.asarray(token_logps, dtype=float))
    return float(x[: max(1, math.ceil(k * len(x)))].mean())  # ceil, so short answers keep >= 1 token


def minkpp_score(token_z: list[float], k: float = MIN_K) -> float:
    """token_z: per-token (log p(x_t) - mu_t) / sigma_t, computed in the forward pass (evaluate.py)."""
    return mink_score(token_z, k)


def minkpp_token_z(logp, targets):
    """Per-token Min-K%++ z-scores: (log p(x_t) - mu_t) / sigma_t, with mu_t = E_{z~p}[log p(z)] and
    sigma_t^2 = E_{z~p}[(log p(z))^2] - mu_t^2 over the whole vocabulary.
    logp [..., V] next-token log-probabilities (log-softmax), targets [...] (torch)."""
    probs = logp.exp()
    mu = (probs * logp).sum(-1)
    sigma = ((probs * logp.square()).sum(-1) - mu.square()).clamp(min=1e-12).sqrt()
    tok = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (tok - mu) / sigma


def mia_auc(member_scores, nonmember_scores) -> float:
    y = [1] * len(member_scores) + [0] * len(nonmember_scores)
    return float(roc_auc_score(y, list(member_scores) + list(nonmember_scores)))


def privleak(auc: float, oracle_auc: float) -> float | None:
    """MUSE's PrivLeak in percent, from member-oriented AUCs (see the module docstring).

    Undefined (None) when the oracle's AUC is 1, i.e. the oracle itself separates forget from holdout.
    """
    if oracle_auc >= 1.0:
        return None
    return ((1 - auc) - (1 - oracle_auc)) / (1 - oracle_auc) * 100


SCORES = {
    "loss": lambda r: loss_score(r["token_logps"]),
    "zlib": lambda r: zlib_score(r["token_logps"], r["answer"]),
    "mink": lambda r: mink_score(r["token_logps"]),
    "minkpp": lambda r: minkpp_score(r["token_z"]),
}


def reference_score(token_logps: list[float], ref_token_logps: list[float]) -> float:
    """The LOSS score minus the reference model's: mean log p(model) - mean log p(reference)."""
    return loss_score(token_logps) - loss_score(ref_token_logps)


def gradnorm_score(grad_norm: float) -> float:
    return -float(grad_norm)


def _paired(rows: list[dict], ref_rows: list[dict]) -> list[dict]:
    """`ref_rows` in the order of `rows`: as they are when their ids agree (the same split scored twice), else
    matched by item id."""
    if [r.get("id") for r in rows] == [r.get("id") for r in ref_rows]:
        return ref_rows
    by_id = {r["id"]: r for r in ref_rows}
    return [by_id[r["id"]] for r in rows]


def _reference_auc(ctx: dict) -> float | None:
    ref = ctx["oracle"]
    if not (ref.get("forget") and ref.get("holdout")):
        return None
    pairs = {split: zip(ctx[split], _paired(ctx[split], ref[split])) for split in ("forget", "holdout")}
    scores = {split: [reference_score(r["token_logps"], o["token_logps"]) for r, o in p] for split, p in pairs.items()}
    return mia_auc(scores["forget"], scores["holdout"])


def _auc(splits: dict, attack: str) -> float:
    f = SCORES[attack]
    return mia_auc([f(r) for r in splits["forget"]], [f(r) for r in splits["holdout"]])


for _name in SCORES:
    metric(
        f"mia_{_name}_auc",
        None,
        ("forget", "holdout"),
        f"ROC AUC of the {_name} MIA, forget (members) vs holdout; the oracle's value is the goal",
    )(lambda ctx, a=_name: _auc(ctx, a))


@metric(
    "privleak",
    None,
    ("forget", "holdout", "oracle"),
    "MUSE PrivLeak (%) of Min-K% AUC relative to the oracle; 0 is ideal, -100 means fully leaking",
)
def _privleak(ctx):
    return privleak(_auc(ctx, "mink"), _auc(ctx["oracle"], "mink"))


@metric(
    "mia_reference_auc",
    None,
    ("forget", "holdout", "oracle"),
    "ROC AUC of the reference MIA (LOSS calibrated by the oracle's LOSS), forget vs holdout; 0.5 is the oracle's",
)
def _mia_reference(ctx):
    return _reference_auc(ctx)


@metric(
    "mia_gradnorm_auc",
    None,
    ("forget", "holdout"),
    "ROC AUC of the GradNorm MIA (minus the weight-gradient norm), forget vs holdout; only with --mia-gradnorm",
)
def _mia_gradnorm(ctx):
    rows = ctx["forget"] + ctx["holdout"]
    if not all("grad_norm" in r for r in rows):
        return None
    forget, holdout = ([gradnorm_score(r["grad_norm"]) for r in ctx[s]] for s in ("forget", "holdout"))
    return mia_auc(forget, holdout)
