"""TOFU metrics: probability, ROUGE-L recall, truth ratio, forget quality and model utility.

Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs", sec. 2.5, implemented as TOFU's
`aggregate_eval_stat.py` computes them (we follow the code where it is more specific than the paper):

- losses are per-token mean NLLs of an answer given the question (`avg_gt_loss` etc.);
- Prob. on retain/forget = mean exp(-gt_loss); on real authors / world facts it is normalised over the
  options: p_true / (p_true + sum p_perturbed), with p = exp(-loss);
- truth ratio R = exp(mean(perturbed losses) - paraphrased loss)  (eq. 1, with length-normalised probs);
  reported as mean(min(R, 1/R)) on forget and mean(max(0, 1 - 1/R)) elsewhere;
- forget quality = KS-test p-value of R on forget between the model and the oracle (sec. 2.5.2);
- model utility = harmonic mean of the non-forget Prob./ROUGE/Truth-ratio components (sec. 2.5.1).
"""

from __future__ import annotations

import numpy as np
from rouge_score import rouge_scorer
from scipy.stats import hmean, ks_2samp

from obliviate.metrics import metric

# Splits of pre-training-like knowledge whose Prob. TOFU normalises over the answer options.
NORMALISED_SPLITS = ("real_authors", "world_facts")
UTILITY_SPLITS = ("retain", "real_authors", "world_facts")
_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(reference: str, prediction: str) -> float:
    """ROUGE-L recall of `prediction` against `reference` (Lin 2004), stemmed, as TOFU reports it."""
    return _SCORER.score(reference, prediction)["rougeL"].recall


def probability(gt_loss: np.ndarray) -> float:
    """Mean of exp(-loss): the length-normalised probability of the true answer."""
    return float(np.mean(np.exp(-np.asarray(gt_loss, dtype=float))))


def normalized_probability(gt_loss: np.ndarray, perturbed_loss: np.ndarray) -> float:
    """Mean of p_true / (p_true + sum_j p_perturbed_j); gt_loss [N], perturbed_loss [N, K]."""
    p_true = np.exp(-np.asarray(gt_loss, dtype=float))
    p_false = np.exp(-np.asarray(perturbed_loss, dtype=float)).sum(-1)
    return float(np.mean(p_true / (p_true + p_false)))


def truth_ratios(paraphrased_loss: np.ndarray, perturbed_loss: np.ndarray) -> np.ndarray:
    """Per-sample R = exp(mean_j perturbed_loss_j - paraphrased_loss); [N]. Large R: the truth is preferred."""
    return np.exp(np.asarray(perturbed_loss, dtype=float).mean(-1) - np.asarray(paraphrased_loss, dtype=float))


def truth_ratio_stat(ratios: np.ndarray, forget: bool) -> float:
    """TOFU's reported truth-ratio statistic: mean(min(R, 1/R)) on forget, mean(max(0, 1 - 1/R)) otherwise."""
    r = np.asarray(ratios, dtype=float)
    return float(np.mean(np.minimum(r, 1 / r)) if forget else np.mean(np.maximum(0.0, 1 - 1 / r)))


def forget_quality(model_ratios: np.ndarray, oracle_ratios: np.ndarray) -> float:
    """Two-sample KS-test p-value between the model's and the oracle's forget truth ratios (high = alike)."""
    return float(ks_2samp(model_ratios, oracle_ratios).pvalue)


def model_utility(components: list[float]) -> float:
    """Harmonic mean of the utility components (every Prob./ROUGE/Truth-ratio outside the forget split)."""
    return float(hmean(components))


# --- registrations over per-sample rows -----------------------------------------------------------------


def _col(rows: list[dict], key: str) -> np.ndarray:
    return np.array([r[key] for r in rows], dtype=float)


def _ratios(rows: list[dict]) -> np.ndarray:
    return truth_ratios(_col(rows, "paraphrased_loss"), np.array([r["perturbed_loss"] for r in rows], dtype=float))


def split_components(rows: list[dict], split: str) -> dict[str, float]:
    """Prob., ROUGE and truth ratio for one split, with TOFU's per-split conventions."""
    pert = np.array([r["perturbed_loss"] for r in rows], dtype=float)
    normalised = split in NORMALISED_SPLITS
    prob = normalized_probability(_col(rows, "gt_loss"), pert) if normalised else probability(_col(rows, "gt_loss"))
    return {
        "prob": prob,
        "rouge": float(np.mean(_col(rows, "rouge_l_recall"))),
        "truth_ratio": truth_ratio_stat(_ratios(rows), forget=split == "forget"),
    }


def _register_split(split: str) -> None:
    for comp in ("prob", "rouge", "truth_ratio"):
        # on forget, lower Prob./ROUGE is better and the truth ratio should match the oracle's (None)
        better = True if split != "forget" else (None if comp == "truth_ratio" else False)
        metric(f"{split}_{comp}", better, (split,), f"TOFU {comp} on the {split} split")(
            lambda ctx, split=split, comp=comp: split_components(ctx[split], split)[comp]
        )


for _s in ("forget", *UTILITY_SPLITS):
    _register_split(_s)


@metric(
    "forget_quality",
    True,
    ("forget", "oracle"),
    "KS-test p-value of forget truth ratios vs the oracle's (TOFU); 1 = indistinguishable from retraining",
)
def _forget_quality(ctx):
    return forget_quality(_ratios(ctx["forget"]), _ratios(ctx["oracle"]["forget"]))


@metric(
    "model_utility",
    True,
    ("retain",),
    "harmonic mean of Prob./ROUGE/truth ratio on retain, real authors (TOFU) and world facts",
)
def _model_utility(ctx):
    comps = [v for s in UTILITY_SPLITS if ctx.get(s) for v in split_components(ctx[s], s).values()]
    return model_utility(comps)


def value_accuracy(rows: list[dict]) -> float | None:
    """Share of generated answers that contain their row's value (rows without a value are skipped); a row with N
    sampled answers ("value_hit" a list of N) counts N times. None when no row has a value."""
    hits = [r["value_hit"] for r in rows if r.get("value")]
    return float(np.mean(hits)) if hits else None


@metric(
    "forget_value_acc",
    False,
    ("forget",),
    "share of forget questions whose greedy answer contains the true attribute value",
)
def _forget_value_acc(ctx):
    return value_accuracy(ctx["forget"])


@metric(
    "world_facts_value_acc",
    True,
    ("world_facts",),
    "share of world-fact questions whose greedy answer contains the true value",
)
def _world_facts_value_acc(ctx):
    return value_accuracy(ctx["world_facts"])


@metric(
    "retain_value_acc",
    True,
    ("retain",),
    "share of retain questions whose greedy answer contains the true attribute value",
)
def _retain_value_acc(ctx):
    return value_accuracy(ctx["retain"])
