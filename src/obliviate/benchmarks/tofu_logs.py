"""Score published TOFU evaluation logs (`eval_log_aggregated.json`) exactly as TOFU aggregates them.

TOFU's `aggregate_eval_stat.py` (Maini et al. 2024) reads four per-sample logs:

    eval_log.json                       Retain
    eval_log_forget.json                Forget
    eval_real_author_wo_options.json    Real Authors
    eval_real_world_wo_options.json     Real World

and computes for each: Prob. (mean exp(-avg_gt_loss); on the two "real" files normalised against the
perturbed answers), ROUGE (mean rougeL_recall) and Truth Ratio (mean min(R, 1/R) on Forget, mean
max(0, 1 - 1/R) elsewhere, R = exp(mean avg perturbed loss - avg paraphrased loss)). Model utility is the
harmonic mean of the 9 non-forget components; forget quality is the KS-test p-value between the forget
truth ratios of the model and of the retain-only oracle. The formulas live in `obliviate.metrics.tofu`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from obliviate.core.errors import UsageError
from obliviate.data.schema import read_json
from obliviate.metrics.tofu import (
    forget_quality,
    model_utility,
    normalized_probability,
    probability,
    truth_ratio_stat,
    truth_ratios,
)

FILES = {
    "eval_log.json": "retain",
    "eval_log_forget.json": "forget",
    "eval_real_author_wo_options.json": "real_authors",
    "eval_real_world_wo_options.json": "real_world",
}
FIELDS = ("avg_gt_loss", "rougeL_recall", "avg_paraphrased_loss", "average_perturb_loss")


def load_logs(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Read an aggregated log into {split: {field: array ordered by sample index}}, validating the shape."""
    p = Path(path)
    raw = read_json(p)
    if not isinstance(raw, dict):
        raise UsageError(f"{p}: expected TOFU's eval_log_aggregated.json (an object keyed by eval file)")
    out = {}
    for fname, split in FILES.items():
        if fname not in raw:
            raise UsageError(f"{p}: missing {fname!r} (keys: {', '.join(raw)})")
        block = raw[fname]
        arrays = {}
        for field in FIELDS:
            if field not in block or not isinstance(block[field], dict) or not block[field]:
                raise UsageError(f"{p}: {fname} lacks per-sample field {field!r}")
            keys = sorted(block[field], key=lambda k: int(k) if str(k).isdigit() else str(k))
            try:
                arrays[field] = np.array([block[field][k] for k in keys], dtype=float)
            except (TypeError, ValueError):
                raise UsageError(f"{p}: {fname} field {field!r} holds non-numeric or ragged values") from None
        out[split] = arrays
    return out


def _ratios(block) -> np.ndarray:
    return truth_ratios(block["avg_paraphrased_loss"], block["average_perturb_loss"])


def components(logs: dict) -> dict[str, float]:
    """The 12 components, keyed like `retain_prob`, `real_world_truth_ratio`, ..."""
    out = {}
    for split, block in logs.items():
        if split.startswith("real_"):
            prob = normalized_probability(block["avg_gt_loss"], block["average_perturb_loss"])
        else:
            prob = probability(block["avg_gt_loss"])
        out[f"{split}_rouge"] = float(np.mean(block["rougeL_recall"]))
        out[f"{split}_prob"] = prob
        out[f"{split}_truth_ratio"] = truth_ratio_stat(_ratios(block), forget=split == "forget")
    return out


def score(model_logs: str | Path, oracle_logs: str | Path | None = None) -> dict:
    logs = load_logs(model_logs)
    comps = components(logs)
    result = {"model_utility": model_utility([v for k, v in comps.items() if not k.startswith("forget_")])}
    if oracle_logs is not None:
        result["forget_quality"] = forget_quality(_ratios(logs["forget"]), _ratios(load_logs(oracle_logs)["forget"]))
    return result | comps
