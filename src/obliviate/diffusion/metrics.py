"""Erasure metrics with UnlearnCanvas's definitions (Zhang et al. 2024, "UnlearnCanvas: Stylized Image Dataset
for Enhanced Machine Unlearning Evaluation in Diffusion Models", Sec. 4), computed from factor-classifier
predictions on generated images, plus a Frechet distance and the over-erasure rate.

- UA (unlearning accuracy): the share of generations for target-concept prompts NOT classified as the target
  value (on the erased factor). Higher is better.
- IRA (in-domain retain accuracy): classification accuracy, on the erased factor, of generations for prompts of
  the factor's other values. Higher is better.
- CRA (cross-domain retain accuracy): accuracy on the other factors, for prompts that do not contain the target.
- FID here is the Frechet distance between Gaussian fits of the factor classifiers' penultimate features of two
  image sets (Heusel et al. 2017, Eq. 6: ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with scipy's `sqrtm`).
  It is named `fd_classifier` for what it is: not Inception features, so not comparable with published FIDs.
- Over-erasure rate (OVERT-style): the share of benign neighbour prompts (sharing words or looks with the target)
  whose generation no longer shows what they ask for, on the factors they name.
"""

from __future__ import annotations

import numpy as np


def _as_np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def unlearning_accuracy(pred_target_factor, target_value: int) -> float:
    """UA: share of target-prompt generations whose erased-factor prediction is not the target value."""
    p = _as_np(pred_target_factor)
    return float((p != target_value).mean()) if p.size else float("nan")


def factor_accuracy(pred, want) -> float:
    p, w = _as_np(pred), _as_np(want)
    return float((p == w).mean()) if p.size else float("nan")


def cross_domain_accuracy(preds: dict, wants: dict, erased_factor: str) -> float:
    """CRA: accuracy pooled over every factor except the erased one (preds/wants: factor -> [N])."""
    hits = [(_as_np(preds[f]) == _as_np(wants[f])) for f in preds if f != erased_factor and f in wants]
    return float(np.concatenate(hits).mean()) if hits else float("nan")


def frechet_distance(feat_a, feat_b) -> float:
    """Frechet distance between Gaussian fits of two feature sets [N, F] (Heusel et al. 2017, Eq. 6)."""
    import warnings

    from scipy.linalg import LinAlgWarning, sqrtm

    a, b = _as_np(feat_a).astype(np.float64), _as_np(feat_b).astype(np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    s_a, s_b = np.atleast_2d(s_a), np.atleast_2d(s_b)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LinAlgWarning)
        covmean = sqrtm(s_a @ s_b)
    if caught or not np.isfinite(covmean).all():
        # a singular product (fewer images than features): the reference FID code (pytorch-fid,
        # `calculate_frechet_distance`) retries with eps * I added to both covariances, eps = 1e-6
        offset = np.eye(s_a.shape[0]) * 1e-6
        covmean = sqrtm((s_a + offset) @ (s_b + offset))
    if np.iscomplexobj(covmean):  # numerical noise: keep the real part, as the reference FID code does
        covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


def over_erasure_rate(preds: dict, wants: dict, base_preds: dict | None = None) -> float:
    """Share of benign prompts whose generation misses any factor the prompt names (wants: factor -> [N], -1
    where a prompt does not name that factor). With `base_preds`, only prompts the base model got right count."""
    n = len(_as_np(next(iter(wants.values()))))
    ok = np.ones(n, dtype=bool)
    base_ok = np.ones(n, dtype=bool)
    for f, w in wants.items():
        w = _as_np(w)
        named = w >= 0
        ok &= ~named | (_as_np(preds[f]) == w)
        if base_preds is not None:
            base_ok &= ~named | (_as_np(base_preds[f]) == w)
    ok, keep = ok[base_ok], base_ok.sum()
    return float((~ok).mean()) if keep else float("nan")
