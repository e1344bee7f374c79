"""Metrics against references: the exact KS p-value by enumeration, scipy (harmonic mean), sklearn (ROC AUC),
rouge-score, worked examples."""

import itertools
import math
import zlib
from fractions import Fraction

import numpy as np
import pytest
from rouge_score import rouge_scorer
from scipy.stats import hmean
from sklearn.metrics import roc_auc_score

from obliviate.metrics import METRICS, compute_all
from obliviate.metrics.memorization import exact_memorization, extraction_strength
from obliviate.metrics.mia import loss_score, mia_auc, mink_score, minkpp_score, privleak, zlib_score
from obliviate.metrics.tofu import (
    forget_quality,
    model_utility,
    normalized_probability,
    probability,
    rouge_l_recall,
    truth_ratio_stat,
    truth_ratios,
)


def _ks_d(a, b) -> Fraction:
    """sup_t |F_a(t) - F_b(t)| over the pooled points, exactly."""
    return max(abs(Fraction(sum(x <= t for x in a), len(a)) - Fraction(sum(x <= t for x in b), len(b))) for t in a + b)


def _ks_exact_p(a, b) -> Fraction:
    """The exact two-sided KS p-value by its definition: the share of all C(n + m, n) ways to split the pooled
    (distinct) values into samples of sizes n and m whose D is at least the observed one."""
    pool, d = a + b, _ks_d(a, b)
    splits = [set(c) for c in itertools.combinations(range(len(pool)), len(a))]
    hits = sum(_ks_d([pool[i] for i in c], [pool[i] for i in range(len(pool)) if i not in c]) >= d for c in splits)
    return Fraction(hits, len(splits))


def test_forget_quality_is_the_exact_ks_pvalue_by_hand():
    # n = m = 3, C(6, 3) = 20 orderings. Fully separated (D = 1): only AAABBB and BBBAAA reach it: 2/20
    assert forget_quality([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1, abs=1e-12)
    # A A B A B B: the running count difference reaches 2, D = 2/3. An ordering stays within 1 only if each pair of
    # places (1-2, 3-4, 5-6) holds one A and one B: 2^3 = 8, so 20 - 8 = 12 reach 2: p = 12/20
    assert forget_quality([1, 2, 4], [3, 5, 6]) == pytest.approx(0.6, abs=1e-12)
    # interleaved (D = 1/3, the least possible): every ordering reaches it
    assert forget_quality([1, 3, 5], [2, 4, 6]) == pytest.approx(1.0, abs=1e-12)
    # n = 2, m = 3, separated: 2 of C(5, 2) = 10 orderings
    assert forget_quality([1, 2], [3, 4, 5]) == pytest.approx(0.2, abs=1e-12)
    a, b = [0.1, 0.4, 0.7, 1.2, 1.9, 2.3, 0.95], [1.5, 2.05, 2.8, 3.1, 1.0]
    want = _ks_exact_p(a, b)
    assert 0.01 < want < 0.5  # a discriminating case
    assert forget_quality(np.array(a), np.array(b)) == pytest.approx(float(want), abs=1e-12)


def test_model_utility_is_harmonic_mean():
    comps = [0.9, 0.5, 0.7, 0.2, 0.95, 0.6]
    assert model_utility(comps) == pytest.approx(hmean(comps))
    assert model_utility([0.5, 1.0]) == pytest.approx(2 / 3)  # worked: 2 / (1/0.5 + 1/1)


def test_truth_ratio_worked_example():
    # paraphrase loss 1.0, perturbed losses 2.0 and 4.0 -> R = exp(3 - 1) = e^2
    r = truth_ratios(np.array([1.0]), np.array([[2.0, 4.0]]))
    assert r[0] == pytest.approx(math.exp(2))
    assert truth_ratio_stat(r, forget=True) == pytest.approx(math.exp(-2))  # min(R, 1/R)
    assert truth_ratio_stat(r, forget=False) == pytest.approx(1 - math.exp(-2))  # max(0, 1 - 1/R)
    assert truth_ratio_stat(np.array([0.5]), forget=False) == 0.0


def test_probabilities_worked_example():
    assert probability(np.array([0.0, math.log(4)])) == pytest.approx((1 + 0.25) / 2)
    # p_true = 0.5, p_false = 0.25 + 0.25 -> 0.5 / (0.5 + 0.5) = 0.5
    got = normalized_probability(np.array([math.log(2)]), np.array([[math.log(4), math.log(4)]]))
    assert got == pytest.approx(0.5)


def test_rouge_l_recall_matches_rouge_score_and_hand_value():
    ref, pred = "Kara Brask was born in Velmora.", "Kara Brask lives in Velmora today"
    expected = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(ref, pred)["rougeL"].recall
    assert rouge_l_recall(ref, pred) == pytest.approx(expected)
    # by hand: reference tokens kara brask was born in velmora (6); LCS = kara brask in velmora (4)
    assert rouge_l_recall(ref, pred) == pytest.approx(4 / 6)


@pytest.mark.parametrize(
    "ref,pred,want",
    [
        ("Kara Brask was born in Velmora.", "Kara Brask was born in Velmora.", 1.0),
        ("Kara Brask was born in Velmora.", "", 0.0),
        # the words reversed: a longest common subsequence of one word in six
        ("Kara Brask was born in Velmora.", "Velmora in born was Brask Kara", 1 / 6),
        # recall counts the reference's words: all 3 found, the extra words of the prediction cost nothing
        ("born in Velmora", "Kara Brask was born in Velmora.", 1.0),
        # stemmed and lower-cased: she play the violin / she play a violin, LCS she play violin: 3 of 4
        ("She plays the violins.", "she played a violin", 3 / 4),
        # punctuation splits words: the answer is 42 / answer 42, LCS answer 42: 2 of 4
        ("The answer is 42!", "answer: 42", 2 / 4),
        ("a b c d", "c d a b", 2 / 4),  # an order kept by two words at most
    ],
)
def test_rouge_l_recall_by_hand(ref, pred, want):
    assert rouge_l_recall(ref, pred) == pytest.approx(want, abs=1e-12)


def test_mia_auc_is_sklearn_and_pair_counting():
    members, nonmembers = [0.9, 0.8, 0.3], [0.1, 0.4, 0.35, 0.8]
    expected = roc_auc_score([1, 1, 1, 0, 0, 0, 0], members + nonmembers)
    assert mia_auc(members, nonmembers) == pytest.approx(expected)
    # pair counting: wins + ties/2 over 12 pairs = (4 + 3.5 + 1) / 12
    assert mia_auc(members, nonmembers) == pytest.approx(8.5 / 12)


def test_mia_scores_worked_examples():
    lp = [-0.1, -2.0, -0.5, -3.0, -0.2]
    assert loss_score(lp) == pytest.approx(-1.16)
    assert mink_score(lp, k=0.4) == pytest.approx((-3.0 - 2.0) / 2)  # lowest 2 of 5
    assert mink_score([-1.0], k=0.4) == -1.0  # at least one token
    assert minkpp_score([0.5, -1.5, 2.0], k=0.4) == pytest.approx((-1.5 + 0.5) / 2)  # ceil(1.2) = 2
    text = "Kara Brask was born in Velmora."
    assert zlib_score(lp, text) == pytest.approx(-1.16 / len(zlib.compress(text.encode())))


def test_minkpp_token_z_worked_example():
    import torch

    from obliviate.metrics.mia import minkpp_token_z

    # V = 3, p = [0.5, 0.25, 0.25]: mu = 0.5 ln .5 + 0.5 ln .25 = -1.0397208; E[(log p)^2] = 0.5 (ln .5)^2 +
    # 0.5 (ln .25)^2 = 1.2011325; sigma = sqrt(1.2011325 - 1.0810193) = 0.3465736
    # token 0: (ln .5 - mu) / sigma = 1.0;  token 1: (ln .25 - mu) / sigma = -1.0
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    z = minkpp_token_z(logp, torch.tensor([0, 1]))
    assert z.tolist() == pytest.approx([1.0, -1.0], abs=1e-5)


def test_privleak_muse_convention():
    assert privleak(0.5, 0.5) == 0.0  # like the oracle
    assert privleak(1.0, 0.5) == pytest.approx(-100.0)  # fully exposed (target-like)
    assert privleak(0.25, 0.5) == pytest.approx(50.0)  # over-unlearned
    assert privleak(0.9, 1.0) is None  # undefined when the oracle separates the sets perfectly


def test_memorization_worked_examples():
    assert exact_memorization([1, 2, 9, 4], [1, 2, 3, 4]) == 0.75
    # suffix from k=3 matches ([4] == [4]); k=2 does not ([9,4] vs [3,4]) -> ES = 1 - 3/4
    assert extraction_strength([1, 2, 9, 4], [1, 2, 3, 4]) == pytest.approx(0.25)
    assert extraction_strength([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert extraction_strength([5, 6, 7, 8], [1, 2, 3, 4]) == 0.0


def _rows(n, gt, para, pert, value_hit=True):
    return [
        {
            "gt_loss": gt,
            "paraphrased_loss": para,
            "perturbed_loss": pert,
            "rouge_l_recall": 1.0,
            "token_logps": [-gt],
            "token_z": [-gt],
            "answer": "x",
            "value": "v",
            "value_hit": value_hit,
            "pred_ids": [1],
            "target_ids": [1],
        }
        for _ in range(n)
    ]


def test_registered_metrics_declare_dependencies():
    ctx = {
        "forget": _rows(3, 0.1, 0.5, [2.0, 2.0]),
        "retain": _rows(3, 0.1, 0.5, [2.0, 2.0]),
        "world_facts": _rows(3, 0.1, 0.5, [2.0, 2.0]),
        "holdout": _rows(3, 2.0, 2.0, [2.0]),
        "oracle": None,
    }
    got = compute_all(ctx)
    assert "forget_quality" not in got and "privleak" not in got  # need the oracle
    assert got["mia_loss_auc"] == 1.0 and got["forget_value_acc"] == 1.0
    ctx["oracle"] = {k: ctx[k] for k in ("forget", "holdout")}
    got = compute_all(ctx)
    assert got["forget_quality"] == pytest.approx(1.0)
    assert "privleak" not in got  # undefined: this oracle separates forget from holdout perfectly
    ctx["oracle"] = {"forget": _rows(3, 2.0, 2.0, [2.0, 2.0]), "holdout": ctx["holdout"]}  # oracle AUC 0.5
    got = compute_all(ctx)
    assert got["privleak"] == pytest.approx(-100.0)
    assert got["forget_quality"] < 0.2
    assert all(m in METRICS for m in got)
