"""How far to trust a judge: its agreement with human labels, and a rate corrected for its measured errors.

Human labels of replies: the XSTest completion files (Rottger et al. 2024, "XSTest: A Test Suite for Identifying
Exaggerated Safety Behaviours in Large Language Models"): `completions_gpt4_labelled.csv` and
`completions_mistralguard_labelled.csv`, columns `prompt`, `completion`, `final_label` (`1_full_compliance`,
`2_full_refusal`, `3_partial_refusal`). A reply is *positive* when the annotators called it full compliance; full and
partial refusals are negative (`judges.refusal.human_label`). A judge's verdict is positive when it calls the reply
harmful (a harm judge: what an ASR counts). XSTest says whether a reply complied, not whether it is harmful: a judge
whose rules exclude benign answers (HarmBench's "benign generations do not count") says "no" to a correct answer of
a safe prompt, and its sensitivity measured here is low for that reason alone. Read it as agreement with compliance.

- `agreement(judged, truth)`: agreement, sensitivity (positives the judge found), specificity (negatives it left),
  each with its n; rows the judge could not be parsed on (None) are left out and counted as `unparsed`.
- `rogan_gladen(p_obs, sens, spec)`: the true rate behind an observed one, given the judge's error rates (Rogan &
  Gladen 1978, "Estimating prevalence from the results of a screening test", Am. J. Epidemiol. 107(1):71-76):
  p_true = (p_obs + spec - 1) / (sens + spec - 1), clipped to [0, 1]; undefined when sens + spec <= 1 (a judge no
  better than chance).
- `corrected_rate(verdicts, judged, truth)`: that estimate with a percentile bootstrap interval that resamples both
  samples it rests on, independently: the audited replies (p_obs) and the labelled rows (sens, spec). Resampling n
  yes/no outcomes with replacement is drawing a binomial count, and resampling the labelled rows is drawing a
  multinomial over their four cells (TP, FN, FP, TN); both are drawn so, from one seeded generator. Resamples in
  which sens + spec <= 1 have no corrected value: they are counted (`undefined_resamples`) and left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from obliviate.core.errors import UsageError
from obliviate.judges.refusal import human_label

LABEL_COLUMNS = ("prompt", "completion", "final_label")


@dataclass
class Labelled:
    """One human-labelled reply: `positive` is True for full compliance."""

    prompt: str
    reply: str
    positive: bool


def read_labels(path: str | Path, limit: int | None = None) -> list[Labelled]:
    """The labelled replies of an XSTest completions file (`LABEL_COLUMNS`); rows whose label is neither compliance
    nor refusal are left out. `limit`: every n-th row, at most that many."""
    from obliviate.data.prompts import read_csv

    if limit is not None and limit < 1:
        raise UsageError(f"--harm-judge-label-rows must be >= 1, got {limit}")
    rows = read_csv(path, LABEL_COLUMNS)
    out = []
    for r in rows:
        lab = human_label(str(r["final_label"] or ""))
        if lab is not None:
            out.append(Labelled(str(r["prompt"]), str(r["completion"] or ""), lab == "compliance"))
    if not out:
        raise UsageError(f"{path}: no row has a compliance or refusal label in 'final_label'")
    if limit and len(out) > limit:
        step = len(out) / limit
        out = [out[int(i * step)] for i in range(limit)]
    return out


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def confusion(judged: Sequence[bool | None], truth: Sequence[bool]) -> dict[str, int]:
    """{"tp", "fn", "fp", "tn", "unparsed"}: judged positive/negative against the true label."""
    if len(judged) != len(truth):
        raise ValueError(f"{len(judged)} verdicts but {len(truth)} labels")
    c = {"tp": 0, "fn": 0, "fp": 0, "tn": 0, "unparsed": 0}
    for j, t in zip(judged, truth):
        if j is None:
            c["unparsed"] += 1
        else:
            c[("t" if bool(j) == bool(t) else "f") + ("p" if j else "n")] += 1
    return c


def agreement(judged: Sequence[bool | None], truth: Sequence[bool]) -> dict:
    """Agreement, sensitivity and specificity of verdicts against labels, with n (parsed rows), n_positive,
    n_negative and the confusion counts; a rate whose denominator is 0 is None."""
    c = confusion(judged, truth)
    pos, neg = c["tp"] + c["fn"], c["tn"] + c["fp"]
    return {
        "n": pos + neg,
        "agreement": _ratio(c["tp"] + c["tn"], pos + neg),
        "sensitivity": _ratio(c["tp"], pos),
        "specificity": _ratio(c["tn"], neg),
        "n_positive": pos,
        "n_negative": neg,
        **c,
    }


def rogan_gladen(p_obs: float, sens: float | None, spec: float | None) -> float | None:
    """(p_obs + spec - 1) / (sens + spec - 1) clipped to [0, 1]; None when sens or spec is unknown or
    sens + spec <= 1."""
    if sens is None or spec is None or sens + spec <= 1:
        return None
    return min(1.0, max(0.0, (p_obs + spec - 1) / (sens + spec - 1)))


def corrected_rate(
    verdicts: Sequence[bool | None],
    judged: Sequence[bool | None],
    truth: Sequence[bool],
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """The Rogan-Gladen rate of `verdicts` (the judge on the audited replies; None = unparsed, left out), with the
    judge's error rates from `judged` against `truth` (the labelled set), and its bootstrap interval (module
    docstring). {"value", "lo", "hi", "level", "n", "samples", "n_labelled", "observed", "sensitivity", "specificity",
    "resamples", "undefined_resamples", "method"}; value, lo and hi are None where the correction is undefined."""
    import numpy as np

    got = [bool(v) for v in verdicts if v is not None]
    a = agreement(judged, truth)
    n, n_lab = len(got), a["n"]
    p_obs = sum(got) / n if n else None
    out = {
        "value": None,
        "lo": None,
        "hi": None,
        "level": level,
        "n": n,
        "samples": 1,  # the audited replies are resampled one by one (not clustered by prompt)
        "n_labelled": n_lab,
        "observed": p_obs,
        "sensitivity": a["sensitivity"],
        "specificity": a["specificity"],
        "resamples": resamples,
        "undefined_resamples": None,
        "method": "Rogan-Gladen 1978; percentile bootstrap over the audited replies and the labelled rows",
    }
    if p_obs is None:
        return out
    out["value"] = rogan_gladen(p_obs, a["sensitivity"], a["specificity"])
    if out["value"] is None:
        return out
    rng = np.random.default_rng(seed)
    obs = rng.binomial(n, p_obs, size=resamples) / n
    cells = np.array([a["tp"], a["fn"], a["fp"], a["tn"]], dtype=float)
    counts = rng.multinomial(n_lab, cells / n_lab, size=resamples)
    tp, fn, fp, tn = counts.T
    with np.errstate(divide="ignore", invalid="ignore"):
        sens, spec = tp / (tp + fn), tn / (tn + fp)
        den = sens + spec - 1
        p = np.clip((obs + spec - 1) / den, 0.0, 1.0)
    ok = np.isfinite(p) & (den > 0)
    out["undefined_resamples"] = int((~ok).sum())
    if ok.any():
        lo, hi = np.quantile(p[ok], [(1 - level) / 2, 1 - (1 - level) / 2])
        out["lo"], out["hi"] = float(lo), float(hi)
    return out
