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
  With fewer than twice as many images as features, it is computed on the pooled features' top principal axes
  (`fd_dims`: half the smaller set's image count), where both covariances have full rank.
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


def fd_dims(n_a: int, n_b: int, n_features: int) -> int:
    """How many dimensions the Frechet distance is computed in: every feature when both sets have at least twice
    as many samples as features, else half the smaller set's sample count. A sample covariance of n samples has
    rank at most n - 1, so with fewer samples than features (the demo's 24 images against 256 classifier features)
    S1 S2 is singular and its square root ill-defined (scipy warned "matrix is singular"); half the samples keeps
    the smaller set's covariance well conditioned in the kept dimensions. Our choice, not a published one: FID's
    own answer is more samples than Inception's 2,048 features, which a 24-image evaluation cannot give."""
    return n_features if min(n_a, n_b) >= 2 * n_features else max(1, min(n_a, n_b) // 2)


def frechet_distance(feat_a, feat_b) -> float:
    """Frechet distance between Gaussian fits of two feature sets [N, F] (Heusel et al. 2017, Eq. 6). With fewer
    than 2F samples in a set, both sets are first projected onto the top `fd_dims(...)` principal axes of their
    pooled, centred features (PCA by SVD), and the distance is computed there."""
    import warnings

    from scipy.linalg import LinAlgWarning, sqrtm

    a, b = _as_np(feat_a).astype(np.float64), _as_np(feat_b).astype(np.float64)
    a, b = (a[:, None], b[:, None]) if a.ndim == 1 else (a, b)
    d = fd_dims(len(a), len(b), a.shape[1])
    if d < a.shape[1]:
        pooled = np.concatenate([a, b])
        centre = pooled.mean(0)
        axes = np.linalg.svd(pooled - centre, full_matrices=False)[2][:d]  # [d, F], by explained variance
        a, b = (a - centre) @ axes.T, (b - centre) @ axes.T
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    s_a, s_b = np.atleast_2d(s_a), np.atleast_2d(s_b)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LinAlgWarning)
        covmean = sqrtm(s_a @ s_b)
    if caught or not np.isfinite(covmean).all():
        # a singular product (a feature that never varies): the reference FID code (pytorch-fid,
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
