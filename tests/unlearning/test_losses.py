"""Every loss against a value computed by hand on a 2-example batch.

Batch statistics used throughout: summed answer log-probs and answer lengths per sequence. The expected
numbers were computed with pencil-level formulas (logsigmoid(x) = -log(1 + e^-x)) and are written out.
"""

import math

import pytest
import torch

from obliviate.engine.method import nll_loss
from obliviate.unlearning.methods.grad_ascent import grad_ascent_loss
from obliviate.unlearning.methods.grad_diff import grad_diff_loss, kl_retain
from obliviate.unlearning.methods.idk_dpo import dpo_loss
from obliviate.unlearning.methods.idk_nll import idk_nll_loss
from obliviate.unlearning.methods.npo import npo_loss
from obliviate.unlearning.methods.simnpo import simnpo_loss

T = torch.tensor


def test_nll_is_token_mean():
    # (2 + 4) nats over (2 + 4) tokens = 1.0
    assert nll_loss(T([-2.0, -4.0]), T([2.0, 4.0])).item() == pytest.approx(1.0)
    # (1 + 9) / (1 + 4) = 2.0 token-mean, vs per-sequence mean (1 + 2.25) / 2 = 1.625
    assert nll_loss(T([-1.0, -9.0]), T([1.0, 4.0])).item() == pytest.approx(2.0)


def test_grad_ascent():
    assert grad_ascent_loss(T([-1.0, -9.0]), T([1.0, 4.0])).item() == pytest.approx(-2.0)


def test_grad_diff():
    # -gamma * 2.0 + alpha * 0.5 with gamma 1, alpha 2
    assert grad_diff_loss(T(2.0), T(0.5), gamma=1.0, alpha=2.0).item() == pytest.approx(-1.0)


def test_kl_retain():
    # one position, V = 2: p_ref = [0.5, 0.5], p_theta = [0.25, 0.75]
    # KL = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3) = 0.1438410
    logits = torch.log(T([[[0.25, 0.75], [0.5, 0.5]]]))
    ref = torch.log(T([[[0.5, 0.5], [0.9, 0.1]]]))
    mask = T([[1.0, 0.0]])  # the second position is padding and must not count
    assert kl_retain(logits, ref, mask).item() == pytest.approx(0.1438410, abs=1e-6)


def test_npo():
    # log ratios -1 and -3; -beta*ratio = 0.1, 0.3
    # -(2/0.1) * mean(logsig(0.1), logsig(0.3)) = -20 * mean(-0.6443967, -0.5543552) = 11.987519
    assert npo_loss(T([-2.0, -4.0]), T([-1.0, -1.0]), beta=0.1).item() == pytest.approx(11.987519, abs=1e-5)
    # at the reference the loss is (2/beta) ln 2
    assert npo_loss(T([-3.0]), T([-3.0]), beta=0.5).item() == pytest.approx(4 * math.log(2), abs=1e-6)


def test_simnpo():
    # avg NLL = 2/2 = 1 and 4/8 = 0.5
    # delta 0:   -(2/4.5) * mean(logsig(4.5), logsig(2.25))      = 0.0247232
    # delta 0.5: -(2/4.5) * mean(logsig(2.25), logsig(0))        = 0.1763008
    logp, n = T([-2.0, -4.0]), T([2.0, 8.0])
    assert simnpo_loss(logp, n, beta=4.5, delta=0.0).item() == pytest.approx(0.0247232, abs=1e-6)
    assert simnpo_loss(logp, n, beta=4.5, delta=0.5).item() == pytest.approx(0.1763008, abs=1e-6)


def test_idk_nll():
    # NLL of idk answers (3 + 1) / (3 + 1) = 1.0, plus 1.0 * 0.5
    assert idk_nll_loss(T([-3.0, -1.0]), T([3.0, 1.0]), T(0.5), alpha=1.0).item() == pytest.approx(1.5)


def test_dpo():
    # margins: (-2 + 2.5) - (-4 + 3) = 1.5 and (-3 + 3) - (-6 + 5) = 1.0; beta * margin = 0.15, 0.1
    # -(2/0.1) * mean(logsig(0.15), logsig(0.1)) = 12.653537
    got = dpo_loss(T([-2.0, -3.0]), T([-2.5, -3.0]), T([-4.0, -6.0]), T([-3.0, -5.0]), beta=0.1)
    assert got.item() == pytest.approx(12.653537, abs=1e-5)


def test_task_vector_negation():
    from obliviate.unlearning.methods.task_vector import negate_task_vector

    # theta_0 - alpha (theta_ft - theta_0): [1 - (0.5), 2 - (-1)] with alpha 1; alpha 2 doubles the step
    assert negate_task_vector(T([1.0, 2.0]), T([1.5, 1.0]), 1.0).tolist() == [0.5, 3.0]
    assert negate_task_vector(T([1.0, 2.0]), T([1.5, 1.0]), 2.0).tolist() == [0.0, 4.0]


def test_l1_penalty_and_magnitude_mask():
    from obliviate.unlearning.methods.sparsity import l1_penalty, magnitude_mask

    # 0.5 * (1 + 2 + 3) / 3 parameters
    assert l1_penalty([T([1.0, -2.0]), T([3.0])], 0.5).item() == pytest.approx(1.0)
    assert magnitude_mask(T([0.1, -3.0, 0.5, 2.0]), 0.5).tolist() == [False, True, False, True]
    assert magnitude_mask(T([0.1, -3.0]), 0.0).all()


def test_rmu_loss():
    from obliviate.unlearning.methods.rmu import rmu_loss

    # forget: tokens [1,0] and [0,1] vs control [1,1]: squared errors averaged over d: 0.5 and 0.5 -> 0.5
    # retain: real token [2,2] vs frozen [0,0]: (4 + 4) / 2 = 4; the padded token [9,9] is masked out
    h_f = T([[[1.0, 0.0], [0.0, 1.0]]])
    h_r, h_r0 = T([[[2.0, 2.0], [9.0, 9.0]]]), T([[[0.0, 0.0], [0.0, 0.0]]])
    got = rmu_loss(h_f, T([1.0, 1.0]), h_r, h_r0, T([[1.0, 1.0]]), T([[1.0, 0.0]]), alpha=0.5)
    assert got.item() == pytest.approx(0.5 + 0.5 * 4)


LOGP = torch.log(T([[0.5, 0.25]]))  # one answer of two tokens with p = 0.5 and 0.25
MASK2 = T([[1.0, 1.0]])


def test_wga():
    from obliviate.unlearning.methods.wga import wga_loss

    # -mean(p * CE) = -(0.5 ln 2 + 0.25 ln 4) / 2 ; beta 2: -(0.25 ln 2 + 0.0625 ln 4) / 2
    assert wga_loss(LOGP, MASK2, beta=1.0).item() == pytest.approx(-0.3465736, abs=1e-6)
    assert wga_loss(LOGP, MASK2, beta=2.0).item() == pytest.approx(-0.1299651, abs=1e-6)


def test_satimp():
    from obliviate.unlearning.methods.satimp import satimp_loss

    # w = p (1 - p) = 0.25, 0.1875: -(0.25 ln 2 + 0.1875 ln 4) / 2
    assert satimp_loss(LOGP, MASK2, beta1=1.0, beta2=1.0).item() == pytest.approx(-0.2166085, abs=1e-6)


def test_ce_u():
    from obliviate.unlearning.methods.ce_u import ce_u_loss, drop_first_answer_tokens

    # softmax = [.5, .25, .25]. Target 0: q = [0, .5, .5], CE = ln 4. Target 1: q = [2/3, 0, 1/3],
    # CE = 2/3 ln 2 + 1/3 ln 4. Mean = 1.1552453
    logits = torch.log(T([[[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]]))
    assert ce_u_loss(logits, torch.tensor([[0, 1]]), MASK2).item() == pytest.approx(1.1552453, abs=1e-6)
    assert drop_first_answer_tokens(T([[0.0, 1.0, 1.0, 1.0, 0.0]]), 1).tolist() == [[0, 0, 1, 1, 0]]


def test_undial():
    from obliviate.unlearning.methods.undial import undial_loss

    # teacher logits [0, 0], true token 0 lowered by ln 3: q = [1/4, 3/4]
    ref, tgt, mask = T([[[0.0, 0.0]]]), torch.tensor([[0]]), T([[1.0]])
    beta = math.log(3)
    assert undial_loss(torch.log(T([[[0.5, 0.5]]])), ref, tgt, mask, beta).item() == pytest.approx(math.log(2))
    # at the target distribution the loss is q's entropy: -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623351
    assert undial_loss(torch.log(T([[[0.25, 0.75]]])), ref, tgt, mask, beta).item() == pytest.approx(
        0.5623351, abs=1e-6
    )


def test_ihl():
    from obliviate.unlearning.methods.ihl import ihl_loss

    # probs [.5, .3, .2]: target 0 -> 1 + .5 - .3 = 1.2 ; target 2 -> 1 + .2 - .5 = 0.7 ; mean 0.95
    logits = torch.log(T([[[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]]))
    assert ihl_loss(logits, torch.tensor([[0, 2]]), MASK2).item() == pytest.approx(0.95, abs=1e-6)


def test_flat():
    from obliviate.unlearning.methods.flat import flat_loss

    pe, pf = T(0.2), T(0.8)
    assert flat_loss(pe, pf, "tv").item() == pytest.approx(0.2333307, abs=1e-6)  # -tanh(.2)/2 + tanh(.8)/2
    assert flat_loss(pe, pf, "kl").item() == pytest.approx(0.6187308, abs=1e-6)  # -.2 + e^(-.2)
    assert flat_loss(pe, pf, "pearson").item() == pytest.approx(0.76, abs=1e-6)  # -.2 + .16 + .8
    assert flat_loss(pe, pf, "js").item() == pytest.approx(0.3829452, abs=1e-6)


def test_fila_factors_reconstruct_the_weight():
    from obliviate.unlearning.methods.ihl import fila_factors

    g = torch.Generator().manual_seed(0)
    W, imp = torch.randn(6, 5, generator=g), torch.rand(6, 5, generator=g)
    A, B, base = fila_factors(W, imp, r=2, scale=4.0)
    assert A.shape == (2, 5) and B.shape == (6, 2)
    assert torch.allclose(base + 4.0 * B @ A, W, atol=1e-5)  # the model is unchanged at step 0


def test_prune_unlearn_prunes_each_fused_expert():
    """On a MoE (fused experts [E, ., .]), `begin` zeroes the smallest `sparsity` share of each expert's matrix, as
    it does of each Linear weight; before, the experts stayed dense."""

    from obliviate.unlearning.methods import METHODS
    from tests.models.test_anatomy import _model

    model = _model("mixtral")
    method = METHODS.get("prune_unlearn")(sparsity=0.25)
    method.begin(model)
    down = model.model.layers[0].mlp.experts.down_proj  # [4, 32, 32]
    assert all(int((e == 0).sum()) == round(0.25 * e.numel()) for e in down.detach())
    attn = model.model.layers[0].self_attn.q_proj.weight
    assert int((attn == 0).sum()) == round(0.25 * attn.numel())
