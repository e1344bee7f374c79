"""The embedding judge's logistic regression (`fit_logistic`) against scikit-learn's, to 1e-6.

`fit_logistic` minimises (sum_i s_i logloss_i + l2/2 |w|^2) / n with the bias unpenalised; scikit-learn's
LogisticRegression minimises C sum_i s_i logloss_i + 1/2 |w|^2, also with the bias unpenalised: the same minimiser
at C = 1 / l2. It stays hand-written because recipe 2 bounds the sign of each weight (L-BFGS-B), which scikit-learn
does not offer; with a bound active, the fit equals scikit-learn's on the other features, the bounded weight 0.
"""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from obliviate.judges.embedding import fit_logistic

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 3))
Y = (X @ np.array([1.5, -2.0, 0.5]) + RNG.normal(size=40) > 0.8).astype(float)  # 12 of 40 positive
SW = RNG.uniform(0.2, 3.0, size=40)


def sklearn_fit(x, y, l2, class_weight=None, sample_weight=None):
    ref = LogisticRegression(
        C=1 / l2, class_weight=class_weight, solver="newton-cholesky", tol=1e-12, max_iter=1000
    ).fit(x, y, sample_weight=sample_weight)
    return ref.coef_[0], float(ref.intercept_[0])


def assert_same(got, want):
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-6)
    assert got[1] == pytest.approx(want[1], abs=1e-6)


@pytest.mark.parametrize("l2", [0.1, 1.0, 10.0])
def test_fit_logistic_is_sklearns(l2):
    assert 0.2 < Y.mean() < 0.4  # unbalanced, so "balanced" matters
    assert_same(fit_logistic(X, Y, l2), sklearn_fit(X, Y, l2, "balanced"))
    assert_same(fit_logistic(X, Y, l2, balanced=False), sklearn_fit(X, Y, l2))
    # row weights: scaled to mean 1, then each class given half the total weight (by weight, not by count)
    s = SW * len(Y) / SW.sum()
    pos = s[Y > 0.5].sum() / len(Y)
    s = s * np.where(Y > 0.5, 0.5 / pos, 0.5 / (1 - pos))
    assert_same(fit_logistic(X, Y, l2, sample_weight=SW), sklearn_fit(X, Y, l2, sample_weight=s))


def test_sign_bounds_by_sklearn_on_the_free_features():
    free = fit_logistic(X, Y, 1.0)
    assert free[0][1] < -0.1 and free[0][0] > 0.1
    # feature 1 weighs against: bounded to >= 0 it sits at 0, and the rest is the fit without it
    w, b = fit_logistic(X, Y, 1.0, signs=np.array([0, 1, 0]))
    assert w[1] == 0.0
    ref_w, ref_b = sklearn_fit(X[:, [0, 2]], Y, 1.0, "balanced")
    assert_same((w[[0, 2]], b), (ref_w, ref_b))
    # bounds that the free fit already meets change nothing
    assert_same(fit_logistic(X, Y, 1.0, signs=np.array([1, -1, 0])), free)
