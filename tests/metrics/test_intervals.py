"""Bootstrap intervals (`obliviate.metrics.intervals`) against `scipy.stats.bootstrap` called directly, and the
clustered (prompt-level) bootstrap against a hand-written one."""

import numpy as np
import pytest
from scipy.stats import bootstrap

from obliviate.core.errors import UsageError
from obliviate.metrics.intervals import all_of_n, any_of_n, format_interval, mean_interval, rate_interval


def _scipy(x, seed=0, level=0.95, resamples=2000):
    ci = bootstrap(
        (np.asarray(x, float),),
        np.mean,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return ci.low, ci.high


def test_rate_interval_is_scipys_percentile_bootstrap():
    outcomes = [[True]] * 35 + [[False]] * 5  # 0.875 on 40 prompts
    got = rate_interval(outcomes, seed=3)
    lo, hi = _scipy([1.0] * 35 + [0.0] * 5, seed=3)
    assert got["value"] == 0.875 and got["n"] == 40 and got["samples"] == 1 and got["level"] == 0.95
    assert (got["lo"], got["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert 0.7 < got["lo"] < 0.875 < got["hi"] <= 1.0  # about +-0.1 on 40 prompts, as the binomial says
    assert got["method"].startswith("percentile")
    assert rate_interval(outcomes, seed=3) == got  # seeded: the same interval again
    lo90, hi90 = _scipy([1.0] * 35 + [0.0] * 5, seed=3, level=0.9)
    at90 = rate_interval(outcomes, level=0.9, seed=3)
    assert (at90["lo"], at90["hi"]) == (pytest.approx(lo90), pytest.approx(hi90))
    assert hi90 - lo90 < got["hi"] - got["lo"]  # a lower level, a narrower interval


def test_mean_interval_is_scipys_and_takes_nested_items():
    rng = np.random.default_rng(1)
    values = rng.random(25).tolist()
    got = mean_interval(values, seed=5)
    lo, hi = _scipy(values, seed=5)
    assert got["value"] == pytest.approx(np.mean(values)) and (got["lo"], got["hi"]) == (
        pytest.approx(lo),
        pytest.approx(hi),
    )
    nested = mean_interval([[v, 1 - v] for v in values], seed=5)  # each item's mean is 0.5: no spread
    assert nested["value"] == nested["lo"] == nested["hi"] == pytest.approx(0.5) and nested["samples"] == 2


def test_clustered_interval_resamples_prompts_with_their_samples():
    # 20 prompts x 5 samples; a prompt's samples agree (all refused or none): 20 observations, not 100
    outcomes = [[True] * 5] * 14 + [[False] * 5] * 6
    got = rate_interval(outcomes, seed=0)
    assert got["value"] == 0.7 and got["n"] == 20 and got["samples"] == 5 and "clustered" in got["method"]
    lo, hi = _scipy([1.0] * 14 + [0.0] * 6, seed=0)  # the bootstrap of the prompts' shares
    assert (got["lo"], got["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    # a hand-written cluster bootstrap (draw prompts, keep their samples, pool them) agrees within resampling noise
    rng, flat = np.random.default_rng(9), np.array(outcomes, float)
    means = [flat[rng.integers(0, 20, 20)].mean() for _ in range(4000)]
    assert got["lo"] == pytest.approx(np.percentile(means, 2.5), abs=0.051)
    assert got["hi"] == pytest.approx(np.percentile(means, 97.5), abs=0.051)
    # treating the 100 samples as independent would understate the spread
    naive = rate_interval([[s] for o in outcomes for s in o], seed=0)
    assert naive["hi"] - naive["lo"] < 0.7 * (got["hi"] - got["lo"])


def test_any_and_all_of_n():
    outcomes = [[True, False, False], [False, False, False], [True, True, True], [False, True, False]]
    assert rate_interval(outcomes)["value"] == pytest.approx(5 / 12)
    assert any_of_n(outcomes)["value"] == 0.75 and all_of_n(outcomes)["value"] == 0.25
    assert any_of_n(outcomes)["samples"] == 3


def test_degenerate_and_empty_samples():
    same = rate_interval([[True, True]] * 8)
    assert same["value"] == same["lo"] == same["hi"] == 1.0
    none = rate_interval([[False]] * 8)
    assert none["value"] == none["lo"] == none["hi"] == 0.0
    empty = rate_interval([])
    assert empty["n"] == 0 and empty["value"] is None and empty["lo"] is None
    with pytest.raises(UsageError, match="at least one sample"):
        rate_interval([[True], []])
    with pytest.raises(UsageError, match="level"):
        rate_interval([[True]], level=1.5)


def test_format_interval():
    iv = {"value": 0.875, "n": 40, "samples": 1, "lo": 0.75, "hi": 0.975}
    assert format_interval(iv) == "0.875 [0.750, 0.975] n=40"
    assert format_interval(iv | {"samples": 5}) == "0.875 [0.750, 0.975] n=40x5"
    assert format_interval(None, 0.5) == "0.500" and format_interval(None) == "-"
