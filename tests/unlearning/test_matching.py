"""Oracle Matching and Datamodel Matching: the loss, the attribution, OM's pull toward the oracle, bad options."""

import math

import numpy as np
import pytest
import torch

from obliviate.data.schema import load_qa
from obliviate.engine.train import TrainConfig, encode_parts, train
from obliviate.metrics.margins import token_margins_torch
from obliviate.models.encode import collate, token_logps
from obliviate.models.load import load_model
from obliviate.unlearning.attribution import directional_token_change, removal_effect, token_margin_targets
from obliviate.unlearning.methods import METHODS
from obliviate.unlearning.methods.oracle_matching import matching_loss
from obliviate.unlearning.run import unlearning_parts
from tests.cli.test_cli import assert_bad_input

pytestmark = pytest.mark.usefixtures("one_thread")


def test_matching_loss_by_hand():
    # p = 0.5 -> margin 0; p = 0.8 -> log(0.8 / 0.2) = log 4; the third token is not an answer token
    logp = torch.log(torch.tensor([[0.5, 0.8, 0.1]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    target = torch.tensor([[1.0, 1.0, 50.0]])
    assert matching_loss(logp, mask, target).item() == pytest.approx((1.0 + (math.log(4) - 1.0) ** 2) / 2, rel=1e-5)


def test_removal_effect_by_hand():
    # H = G^T G = [[2, 1], [1, 5]]; lambda = 0.1 x the mean squared row norm (1 + 4 + 2) / 3 = 7/30; v = G[2] = [1, 1]
    # (H + lambda I)^-1 v = [157/30 - 1, 67/30 - 1] / (67/30 x 157/30 - 1) = [3810, 1110] / 9619
    G = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    Phi = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    step = np.array([3810, 1110]) / 9619
    expected = [step[0], step[1], step[0] - step[1]]
    assert removal_effect(G, Phi, [2], damping=0.1).tolist() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kernel", ["fisher", "trak"])
def test_removal_effect_wide_sketch_solves_the_same_system(kernel):
    """k > N goes through the N x N kernel (Woodbury): the same numbers as the k x k solve."""
    gen = torch.Generator().manual_seed(0)
    G, Phi = torch.randn(6, 10, generator=gen), torch.randn(6, 10, generator=gen)
    F = (G if kernel == "fisher" else Phi).double()
    lam = 0.05 * (F**2).sum(1).mean()
    step = torch.linalg.solve(F.T @ F + lam * torch.eye(10, dtype=F.dtype), G.double()[[1, 4]].sum(0))
    expected = (Phi.double() @ step).tolist()
    assert removal_effect(G, Phi, [1, 4], damping=0.05, kernel=kernel).tolist() == pytest.approx(expected, rel=1e-4)


def test_removal_effect_predicts_retraining_a_linear_model():
    """Least squares f(x) = x^T theta: with the "trak" kernel (H = X^T X) and little damping the Newton step of
    removing two of 400 points predicts the refit's change of every prediction."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5))
    y = X @ rng.normal(size=5) + rng.normal(size=400)
    forget = [3, 17]
    theta = np.linalg.lstsq(X, y, rcond=None)[0]
    keep = np.setdiff1d(np.arange(400), forget)
    refit = np.linalg.lstsq(X[keep], y[keep], rcond=None)[0]
    actual = X @ (refit - theta)
    G = torch.tensor(X * (X @ theta - y)[:, None])  # gradients of 1/2 (x^T theta - y)^2
    pred = removal_effect(G, torch.tensor(X), forget, damping=1e-9, kernel="trak").double().numpy()
    assert np.corrcoef(pred, actual)[0, 1] > 0.999
    assert np.abs(pred - actual).max() < 0.02 * np.abs(actual).max()
    # the forget points' own predictions move away from their labels
    assert all((X[forget] @ refit - y[forget]) ** 2 > (X[forget] @ theta - y[forget]) ** 2)


@pytest.fixture(scope="module")
def parts(world_dir):
    return unlearning_parts(
        load_qa(world_dir / "forget10.jsonl")[:16], load_qa(world_dir / "retain90.jsonl")[:32], [], 0
    )


def _forget_gap(model, tok, oracle_targets, parts):
    enc = encode_parts(tok, {"forget": parts["forget"]}, 512)["forget"]
    mine = token_margin_targets(model, enc, tok.pad_token_id)
    return float(torch.cat([(a - b) ** 2 for a, b in zip(mine, oracle_targets)]).mean())


def test_oracle_matching_pulls_forget_margins_toward_the_oracle(target_dir, tiny_dir, parts):
    oracle, tok = load_model(str(tiny_dir))
    enc = encode_parts(tok, {"forget": parts["forget"]}, 512)["forget"]
    oracle_targets = token_margin_targets(oracle, enc, tok.pad_token_id)
    model, tok = load_model(str(target_dir))
    before = _forget_gap(model, tok, oracle_targets, parts)
    method = METHODS.get("oracle_matching").from_options({"oracle": str(tiny_dir), "steps": 15, "lr": 3e-3})
    cfg = TrainConfig(forget_batch_size=8, retain_batch_size=8, checkpoint_every=0, progress=False)
    model, res = train(model, tok, method, parts, cfg)
    assert res.history[0]["forget_sq_err"] == pytest.approx(before, rel=0.5)  # batch 8 of 16: about the gap
    assert _forget_gap(model, tok, oracle_targets, parts) < 0.5 * before
    assert "_targets" not in method.__dict__  # dropped after training: unlearn.json records the options only


def test_matching_the_model_itself_starts_at_zero_loss(target_dir, parts):
    """Each batch row meets its own item's targets: a model matched to itself has zero error (shuffled rows)."""
    model, tok = load_model(str(target_dir))
    method = METHODS.get("oracle_matching").from_options({"oracle": str(target_dir), "steps": 1})
    cfg = TrainConfig(forget_batch_size=5, retain_batch_size=7, seed=3, checkpoint_every=0, progress=False)
    _, res = train(model, tok, method, parts, cfg)
    assert res.history[0]["forget_sq_err"] < 1e-8 and res.history[0]["retain_sq_err"] < 1e-8


def test_directional_token_change_is_the_gradient_along_the_direction(target_dir, parts):
    model, tok = load_model(str(target_dir))
    enc = encode_parts(tok, {"forget": parts["forget"][:2]}, 512)["forget"]
    params = [p for p in model.parameters() if p.requires_grad]
    direction = torch.randn(sum(p.numel() for p in params), generator=torch.Generator().manual_seed(1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    base, change = directional_token_change(model, enc, tok.pad_token_id, direction)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # the weights are put back exactly
    logp, mask, _ = token_logps(model, {k: v for k, v in collate(enc[:1], tok.pad_token_id).items()})
    margins = token_margins_torch(logp)[0][mask[0].bool()]
    assert torch.allclose(margins.detach(), base[0], atol=1e-4)
    for t in (0, len(margins) - 1):
        grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(margins[t], params, retain_graph=True)])
        assert change[0][t].item() == pytest.approx(float(grad @ direction), rel=0.02, abs=1e-3)


def test_dmm_predicts_lower_forget_margins_and_scale_0_keeps_the_model(target_dir, parts):
    model, tok = load_model(str(target_dir))
    enc = encode_parts(tok, {"forget": parts["forget"], "retain": parts["retain"]}, 512)
    own = token_margin_targets(model, enc["forget"] + enc["retain"], tok.pad_token_id)
    method = METHODS.get("dmm").from_options({"steps": 1, "proj_dim": 256})
    method.prepare_targets(model, tok, enc, tok.pad_token_id)
    targets = method._targets["forget"] + method._targets["retain"]
    assert [len(t) for t in targets] == [len(m) for m in own]
    # removing the forget items lowers their own margins on average, more than the retain items'
    f, r = method._predicted_shift["forget"], method._predicted_shift["retain"]
    assert np.mean(f) < 0 and np.mean(f) < np.mean(r)
    still = METHODS.get("dmm").from_options({"steps": 1, "proj_dim": 256, "scale": 0})
    still.prepare_targets(model, tok, enc, tok.pad_token_id)
    for m, t in zip(own, still._targets["forget"] + still._targets["retain"]):
        assert torch.allclose(m, t, atol=1e-5)


@pytest.mark.parametrize(
    "options, message",
    [
        ([], "needs --option oracle=DIR"),
        (["--option", "oracle=NOWHERE"], "not a model directory"),
    ],
)
def test_oracle_matching_bad_oracle_exits_2(options, message, tmp_path, capsys, world_dir, target_dir):
    args = ["unlearn", "--model", target_dir, "--forget", world_dir / "forget10.jsonl"]
    args += ["--retain", world_dir / "retain90.jsonl", "--method", "oracle_matching", "--out", tmp_path / "out"]
    assert_bad_input(
        args + [a.replace("NOWHERE", str(tmp_path / "nowhere")) for a in options], capsys, tmp_path / "out", message
    )


@pytest.mark.parametrize(
    "option, message", [("scale=big", "expected float"), ("proj_dim=0", "proj_dim must be"), ("damping=0", "damping")]
)
def test_dmm_bad_options_exit_2(option, message, tmp_path, capsys, world_dir, target_dir):
    args = ["unlearn", "--model", target_dir, "--forget", world_dir / "forget10.jsonl"]
    args += ["--retain", world_dir / "retain90.jsonl", "--method", "dmm", "--option", option, "--out", tmp_path / "out"]
    assert_bad_input(args, capsys, tmp_path / "out", message)


def test_world_demo_gives_its_oracle_to_oracle_matching(tmp_path, world_dir, target_dir, tiny_dir):
    """`obliviate demo --methods oracle_matching` passes the demo's oracle (models/oracle) to the method."""
    import shutil

    from obliviate.demos.world import _run_job

    shutil.copytree(target_dir, tmp_path / "models" / "target")
    shutil.copytree(tiny_dir, tmp_path / "models" / "oracle")
    job = {"out": str(tmp_path), "world": str(world_dir), "forget_split": "forget10", "seed": 0, "finetune_steps": 1}
    name, rows, _, steps = _run_job(job | {"name": "oracle_matching"})
    assert name == "oracle_matching" and steps == METHODS.get("oracle_matching")().steps and rows["forget"]
    assert (tmp_path / "models" / "oracle_matching" / "config.json").is_file()
