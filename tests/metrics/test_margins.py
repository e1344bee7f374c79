import math

import numpy as np
import torch

from obliviate.metrics.margins import item_margin, token_margins, token_margins_torch


def test_margin_is_the_classifier_margin_at_each_token():
    # p = 0.8: log 0.8 - log 0.2 = log 4; p = 0.5: 0; p = 0.1: log(1/9)
    lp = [math.log(0.8), math.log(0.5), math.log(0.1)]
    np.testing.assert_allclose(token_margins(lp), [math.log(4), 0.0, -math.log(9)], atol=1e-12)
    assert math.isclose(item_margin(lp), (math.log(4) - math.log(9)) / 3, abs_tol=1e-12)
    # equals logit_y - logsumexp(other logits) for a 3-way softmax
    logits = torch.tensor([2.0, 0.5, -1.0])
    lpy = torch.log_softmax(logits, 0)[0]
    expected = logits[0] - torch.logsumexp(logits[1:], 0)
    assert torch.allclose(token_margins_torch(lpy), expected, atol=1e-6)


def test_margin_stays_finite_at_certainty_and_empty_answer_is_nan():
    assert np.isfinite(token_margins([0.0])).all()
    assert math.isnan(item_margin([]))
