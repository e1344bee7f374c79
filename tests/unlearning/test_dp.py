"""DP-SGD training (obliviate.unlearning.dp) and the dp2unlearning method: per-sample gradients and clipping on a tiny
Llama, the accountant's epsilon against a hand computation, the CLI's bad inputs and the retain-only unlearning."""

from __future__ import annotations

import copy
import json
import math
import sys

import numpy as np
import pytest
import torch

from obliviate.data.schema import load_qa
from obliviate.unlearning.run import qa_pairs
from tests.cli.test_cli import assert_bad_input, run_cli
from tests.conftest import require_extra, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_per_sample_gradients_and_clipping_on_a_tiny_llama(world_dir, tiny_tokenizer):
    """Every per-sample gradient opacus computes (Linear, Embedding, and LlamaRMSNorm through the functorch
    fallback) equals a one-item backward pass; the clipped sum is sum_i g_i min(1, C / |g_i|), each term of norm <= C."""
    require_extra("opacus", "dp")
    from obliviate.models.encode import collate, encode_pair
    from obliviate.unlearning.dp import DPConfig, item_mean_nll, make_private

    pairs = qa_pairs(load_qa(world_dir / "train.jsonl"))[:3]
    enc = [encode_pair(tiny_tokenizer, q, a) for q, a in pairs]
    model = tiny_model(tiny_tokenizer)
    plain = copy.deepcopy(model)
    expected = []
    for e in enc:  # one item alone, no hooks: its gradient of its own mean answer NLL
        plain.zero_grad()
        item_mean_nll(plain, collate([e], tiny_tokenizer.pad_token_id)).backward()
        expected.append(_grads(plain))
    clip = 0.05
    _, optimizer, _, _, _ = make_private(
        model, 3, DPConfig(8.0, max_grad_norm=clip), batch_size=3, steps=1, lr=1e-3, seed=0
    )
    item_mean_nll(model, collate(enc, tiny_tokenizer.pad_token_id)).backward()
    per_sample = torch.cat([p.grad_sample.flatten(1) for p in model.parameters()], 1)  # [3, P]
    assert torch.allclose(per_sample, torch.stack(expected), atol=1e-5, rtol=1e-4)
    norms = per_sample.norm(dim=1)
    assert (norms > clip).all()  # the check below is about clipping: every item is over C
    optimizer.clip_and_accumulate()
    summed = torch.cat([p.summed_grad.flatten() for p in model.parameters()])
    factors = (clip / norms).clamp(max=1.0)
    assert torch.allclose(summed, (per_sample * factors[:, None]).sum(0), atol=1e-6, rtol=1e-4)
    assert ((per_sample * factors[:, None]).norm(dim=1) <= clip * (1 + 1e-5)).all()


def test_full_batch_epsilon_equals_the_hand_computed_rdp_bound(world_dir, tiny_tokenizer):
    """q = 1 (the batch is the whole data): T steps of the Gaussian mechanism have RDP T a / (2 sigma^2) at order a,
    and opacus converts RDP to (eps, delta) by Balle et al. 2020, Thm. 21; sigma is what opacus' search returns."""
    require_extra("opacus", "dp")
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    from obliviate.unlearning.dp import DPConfig, dp_train

    pairs = qa_pairs(load_qa(world_dir / "train.jsonl"))[:4]
    model = tiny_model(tiny_tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    model, rec = dp_train(model, tiny_tokenizer, pairs, DPConfig(8.0, delta=1e-5), steps=2, lr=1e-3, batch_size=4)
    assert rec["sample_rate"] == 1.0 and rec["steps"] == 2 and rec["poisson_sampling"]
    sigma = get_noise_multiplier(target_epsilon=8.0, target_delta=1e-5, sample_rate=1.0, steps=2, accountant="rdp")
    assert rec["noise_multiplier"] == sigma
    a = np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    eps = np.min(2 * a / (2 * sigma**2) - (math.log(1e-5) + np.log(a)) / (a - 1) + np.log((a - 1) / a))
    assert rec["epsilon"] == pytest.approx(eps, rel=1e-9)
    assert 8.0 - 0.05 < rec["epsilon"] <= 8.0
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())


def test_finetune_dp_epsilon_writes_and_prints_the_accountants_epsilon(world_dir, tmp_path, capsys):
    require_extra("opacus", "dp")
    out = tmp_path / "m"
    args = ["finetune", "--data", world_dir, "--out", out, "--only", "target", "--steps", "3", "--batch-size", "40"]
    code, stdout, err = run_cli([*args, "--dp-epsilon", "2", "--dp-delta", "1e-6", "--threads", "1"], capsys)
    assert code == 0, err
    rec = json.loads((out / "target" / "dp.json").read_text())
    n = len(load_qa(world_dir / "train.jsonl"))
    assert rec["sample_rate"] == pytest.approx(1 / math.ceil(n / 40)) and rec["steps"] == 3
    assert rec["delta"] == 1e-6 and 1.9 < rec["epsilon"] <= 2.0
    assert f"DP-SGD: epsilon {rec['epsilon']:.3f}" in stdout
    assert not (out / "oracle").exists()  # the oracle is exact retraining: never DP, and not asked for here


def test_dp_epsilon_without_opacus_names_the_extra(world_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus", None)  # `import opacus` now raises ImportError
    out = tmp_path / "m"
    assert_bad_input(
        ["finetune", "--data", world_dir, "--out", out, "--dp-epsilon", "8"], capsys, out, "pip install 'obliviate[dp]'"
    )


@pytest.mark.parametrize(
    "flags, flag",
    [
        (["--dp-epsilon", "0"], "--dp-epsilon"),
        (["--dp-epsilon", "-1"], "--dp-epsilon"),
        (["--dp-epsilon", "nan"], "--dp-epsilon"),
        (["--dp-epsilon", "8", "--dp-delta", "0"], "--dp-delta"),
        (["--dp-epsilon", "8", "--dp-delta", "1"], "--dp-delta"),
        (["--dp-epsilon", "8", "--dp-max-grad-norm", "0"], "--dp-max-grad-norm"),
        (["--dp-epsilon", "8", "--dp-max-grad-norm", "-2"], "--dp-max-grad-norm"),
    ],
)
def test_bad_dp_values_exit_2(world_dir, tmp_path, capsys, flags, flag):
    out = tmp_path / "m"
    assert_bad_input(["finetune", "--data", world_dir, "--out", out, *flags], capsys, out, flag)


def test_dp2unlearning_trains_on_retain_only(world_dir, target_dir, tiny_tokenizer):
    """The same retain data and seed with two different forget sets give the same weights: the forget data is
    never read."""
    from obliviate.engine.train import TrainConfig, train
    from obliviate.models.load import load_model
    from obliviate.unlearning.methods import METHODS

    items = qa_pairs(load_qa(world_dir / "train.jsonl"))
    retain = items[:40]
    cfg = TrainConfig(retain_batch_size=8, checkpoint_every=0, progress=False)
    weights = []
    for forget in (items[40:50], [("an unrelated question?", "an unrelated answer")] * 3):
        net, _ = load_model(str(target_dir))
        net, _ = train(
            net, tiny_tokenizer, METHODS.get("dp2unlearning")(steps=3), {"forget": forget, "retain": retain}, cfg
        )
        weights.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert METHODS.get("dp2unlearning").needs == ("retain",)
    assert torch.equal(weights[0], weights[1])
    net, _ = load_model(str(target_dir))
    assert not torch.equal(weights[0], torch.cat([p.detach().flatten() for p in net.parameters()]))


def test_dp2unlearning_warns_without_a_dp_start(target_dir, tmp_path, capsys):
    import shutil

    from obliviate.models.load import load_model
    from obliviate.unlearning.methods import METHODS

    method = METHODS.get("dp2unlearning")()
    method.begin(load_model(str(target_dir))[0])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: dp2unlearning") and "dp.json" in err[0]
    dp_dir = tmp_path / "dp_target"
    shutil.copytree(target_dir, dp_dir)
    (dp_dir / "dp.json").write_text(json.dumps({"epsilon": 7.5, "delta": 1e-5}))
    method.begin(load_model(str(dp_dir))[0])
    err = capsys.readouterr().err
    assert "warning" not in err and "epsilon 7.500" in err
