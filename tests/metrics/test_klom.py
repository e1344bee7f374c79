"""KLoM's binned KL estimator and its summaries, against hand-computed values."""

import math

import numpy as np
import pytest

from obliviate.metrics import METRICS
from obliviate.metrics.klom import binned_kl, distribution_metrics, klom_items, klom_summary, mean_metrics


def test_binned_kl_by_hand():
    # range [0, 1], 20 bins: 0 falls in the first, 1 in the (closed) last. P = (1/2, 1/2), Q = (3/4, 1/4):
    # KL = 1/2 log((1/2)/(3/4)) + 1/2 log((1/2)/(1/4))
    expected = 0.5 * math.log(2 / 3) + 0.5 * math.log(2)
    assert binned_kl([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(expected, abs=1e-12)
    assert binned_kl([3.0, 3.0], [3.0]) == 0.0  # all equal: one bin
    # a bin where P has mass and Q none: Q is floored at 1e-5 there and renormalised, Q = (1e-5, 1) / (1 + 1e-5)
    assert binned_kl([0.0], [1.0]) == pytest.approx(math.log(1 + 1e5), rel=1e-12)
    # margins beyond +-100 are clipped, so 150 and 1000 share the top bin
    assert binned_kl([-5, 150], [-5, 1000]) == 0.0


def test_binned_kl_matches_scipy_entropy_on_histograms():
    from scipy import stats

    rng = np.random.default_rng(0)
    p, q = rng.normal(0, 1, 40), rng.normal(0.5, 1.5, 30)
    edges = np.linspace(min(p.min(), q.min()), max(p.max(), q.max()), 21)
    hp, hq = np.histogram(p, edges)[0] / 40, np.histogram(q, edges)[0] / 30
    hq = np.where(hp > 0, np.maximum(hq, 1e-5), hq)
    assert binned_kl(p, q) == pytest.approx(stats.entropy(hp, hq), rel=1e-10)


def test_klom_items_and_summary():
    oracles = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])  # [K models, N items]
    unlearned = np.array([[0.0, 1.0, 5.0], [0.0, 3.0, 5.0]])
    # item 0 identical; item 1: P = spike at 1, Q = (1/2 at 1, 1/2 at 3) -> log 2; item 2: Q has no mass at 2 -> log(1+1e5)
    np.testing.assert_allclose(klom_items(unlearned, oracles), [0.0, math.log(2), math.log(1 + 1e5)], rtol=1e-12)
    # the 95th percentile of (0, 1, ..., 20) by linear interpolation: 19
    assert klom_summary(range(21)) == pytest.approx(19.0)


def _rows(margins_by_split):
    """Evaluation rows whose answers have one token with margin m: p = sigmoid(m)."""
    return {
        s: [
            {"token_logps": [-math.log1p(math.exp(-m))], "paraphrased_loss": 1.0, "perturbed_loss": [1.0 + m]}
            for m in ms
        ]
        for s, ms in margins_by_split.items()
    }


def test_distribution_metrics_need_two_oracles_and_are_registered_lower_is_better():
    a = _rows({"forget": [0.0, 1.0], "retain": [2.0, 2.0], "holdout": [1.0, 1.0]})
    b = _rows({"forget": [3.0, 1.0], "retain": [2.0, 2.0], "holdout": [1.0, 1.0]})
    assert distribution_metrics([a], [a]) == {}  # one oracle: no distribution, no KLoM
    got = distribution_metrics([a, b], [a, a])
    # forget items: (0 vs {0, 3}) -> log 2, (1 vs {1, 1}) -> 0; 95th percentile of (log 2, 0) = 0.95 log 2
    assert got["klom_forget"] == pytest.approx(0.95 * math.log(2), rel=1e-9)
    assert got["klom_retain"] == 0.0 and got["klom_holdout"] == 0.0
    assert 0 < got["forget_quality_pooled"] <= 1
    assert distribution_metrics([a], [a, a])["forget_quality_pooled"] == pytest.approx(1.0)
    for split in ("forget", "retain", "holdout"):
        assert METRICS.get(f"klom_{split}").higher_is_better is False
    assert METRICS.get("forget_quality_pooled").higher_is_better is True


def test_forget_quality_pooled_is_the_ks_test_of_the_pooled_truth_ratios():
    from scipy.stats import ks_2samp

    # truth ratio R = exp(perturbed - paraphrased loss) = e^m per item; runs pool e^(3, 1, 3, 1), oracles e^(0, 1, 0, 1)
    a = _rows({"forget": [0.0, 1.0]})
    b = _rows({"forget": [3.0, 1.0]})
    run, oracles = [math.e**3, math.e, math.e**3, math.e], [1.0, math.e, 1.0, math.e]
    # empirical CDFs: at 1 the run has 0 and the oracles 1/2; at e, 1/2 against 1: the KS distance is 1/2
    assert ks_2samp(run, oracles).statistic == pytest.approx(0.5)
    got = distribution_metrics([b, b], [a, a])["forget_quality_pooled"]
    assert got == pytest.approx(ks_2samp(run, oracles).pvalue) and got < 1.0


def test_mean_metrics_keeps_the_figures_every_model_has():
    assert mean_metrics([{"a": 1.0, "b": 2.0}, {"a": 3.0}]) == {"a": 2.0}
