"""GCG (`audit/attacks/gcg.py`) on the trained tiny model: the one-hot gradient against finite differences, one
step lowering the target loss, the re-tokenisation filter on every evaluated candidate, the prefix cache against
full sequences, and the attack end to end through `obliviate audit` on a world and on AdvBench prompts."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from obliviate.audit.attacks import gcg
from obliviate.audit.attacks.adversarial import allowed_tokens, slots
from obliviate.audit.attacks.gcg import GCG, candidate_losses, gcg_step, token_gradient
from obliviate.audit.attacks.target_loss import TargetLoss
from obliviate.models.load import load_model
from obliviate.refusal.align import policy_rows
from tests.cli.test_cli import assert_bad_input, run_cli
from tests.conftest import shared_data

FAST = ["--threads", "1", "--max-new-tokens", "6"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def attacked(target_dir, world_dir):
    """(model, tokenizer, slots, initial suffix ids) for the world's first harmful policy row."""
    model, tok = load_model(str(target_dir))
    row = next(r for r in policy_rows(world_dir, "policy_test") if r["kind"] == "harmful")
    s = slots(tok, row["prompt"], row["answer"])
    ids = GCG(suffix_tokens=6)._init_ids(tok, "cpu")
    return model, tok, s, ids


def test_one_hot_gradient_equals_finite_difference(attacked):
    model, tok, s, ids = attacked
    model = model.double()  # restored below (float32 -> float64 -> float32 is exact)
    try:
        tl = TargetLoss(model, s)
        grad = token_gradient([tl], ids)
        W = tl.embed.weight.detach()

        def loss(e):  # the same loss in float64 (from_embeds reduces in float32; Llama's norms stay float32)
            return F.cross_entropy(tl.logits(e[None])[0].double(), tl.target[0])

        e = W[ids]
        with torch.no_grad():
            assert float(loss(e)) == pytest.approx(float(tl(ids[None])[0]), rel=1e-5)
        gen = torch.Generator().manual_seed(0)
        coords = [(i, int(grad[i].argmin())) for i in range(len(ids))]  # the steepest coordinates
        coords += [
            (int(i), int(v))
            for i, v in zip(
                torch.randint(0, len(ids), (6,), generator=gen), torch.randint(0, W.shape[0], (6,), generator=gen)
            )
        ]
        eps = 1e-2  # the embedding rows have norm ~0.2: a small step, above the float32 norms' noise
        for i, v in coords:
            d = torch.zeros_like(e)
            d[i] = W[v]  # moving the one-hot coordinate (i, v) moves embedding i along row v
            with torch.no_grad():
                fd = float((loss(e + eps * d) - loss(e - eps * d)) / (2 * eps))
            assert float(grad[i, v]) == pytest.approx(fd, rel=1e-3, abs=1e-5), (i, v)
        assert any(abs(float(grad[i, v])) > 1e-3 for i, v in coords)  # not a vacuous zero gradient
    finally:
        model.float()


def _recording(monkeypatch):
    """Every candidate row whose loss a GCG step computes."""
    seen, call = [], gcg.candidate_losses

    def record(tl, current, cands, batch=128):
        seen.extend(cands.tolist())
        return call(tl, current, cands, batch)

    monkeypatch.setattr(gcg, "candidate_losses", record)
    return seen


def test_one_step_lowers_the_loss_and_evaluates_only_retokenizing_candidates(attacked, monkeypatch):
    model, tok, s, ids = attacked
    tl = TargetLoss(model, s)
    start = float(tl(ids[None])[0])
    allowed = allowed_tokens(tok, tl.embed.num_embeddings)
    seen = _recording(monkeypatch)
    width = 128
    r = gcg_step([tl], tok, ids, allowed, torch.Generator().manual_seed(0), width, topk=64, n_replace=2, batch=32)
    assert r.loss < start - 1e-3
    assert r.loss == pytest.approx(float(tl(r.ids[None])[0]), abs=1e-5)
    # every evaluated candidate re-tokenises to itself (checked here without the attack's helper)
    assert len(seen) == len(r.evaluated) and 0 < len(seen) < width  # some were dropped by the filter
    for row in seen:
        assert tok(tok.decode(row), add_special_tokens=False)["input_ids"] == row
        assert 1 <= sum(a != b for a, b in zip(row, ids.tolist())) <= 2  # n_replace positions at most
        assert all(allowed[t] for a, t in zip(ids.tolist(), row) if a != t)


def test_cached_and_full_sequence_losses_and_gradients_agree(attacked):
    model, tok, s, ids = attacked
    cached, full = TargetLoss(model, s, cached=True), TargetLoss(model, s, cached=False)
    gen = torch.Generator().manual_seed(1)
    cands = torch.randint(10, len(tok), (8, len(ids)), generator=gen)
    a, b = cached(cands, batch=3), full(cands, batch=8)
    assert torch.allclose(a, b, atol=1e-5) and a.std() > 0
    assert torch.allclose(token_gradient([cached], ids), token_gradient([full], ids), atol=1e-5)
    # GCG's candidates (one or two changes, and the suffix itself): the suffix's unchanged head in the cache too
    cands = ids.repeat(12, 1)
    pos = torch.randint(0, len(ids), (12, 2), generator=gen)
    cands.scatter_(1, pos[:, :1], torch.randint(10, len(tok), (12, 1), generator=gen))
    cands[6:].scatter_(1, pos[6:, 1:], torch.randint(10, len(tok), (6, 1), generator=gen))
    cands[0] = ids
    shared = candidate_losses(cached, ids, cands, batch=4)
    assert torch.allclose(shared, full(cands), atol=1e-5) and shared.std() > 0
    assert torch.equal(candidate_losses(full, ids, cands), full(cands))


def _audit(args, capsys, out):
    code, _, err = run_cli(["audit", *map(str, args), "--out", out, *FAST], capsys)
    assert code == 0, err
    return json.loads((out / "audit.json").read_text())


def _artifacts(out, ids_expected):
    art = out / "artifacts" / "gcg" / "model"
    recs = [json.loads(x) for x in (art / "findings.jsonl").read_text().splitlines()]
    steps = [json.loads(x) for x in (art / "steps.jsonl").read_text().splitlines()]
    assert len(recs) == ids_expected
    for r in recs:
        assert r["adversarial"] == r["request"] + r["suffix"] and r["queries"] > 0
        assert r["curve"] == [[2, r["success"]]] and r["objective"] <= r["objective_start"]
        logged = [x["step"] for x in steps if x["id"] == r["id"]]
        assert logged == [0, 1, 2]
    return recs


def test_gcg_through_the_audit_on_a_world_and_on_advbench(target_dir, world_dir, tmp_path, capsys):
    opts = ["steps=2", "search_width=16", "topk=16", "check_every=2", "suffix_tokens=4", "behaviours=2"]
    options = [x for o in opts for x in ("--option", f"gcg.{o}")]
    out = tmp_path / "world"
    doc = _audit([target_dir, "--suite", "refusal", "--data", world_dir, "--attacks", "gcg", *options], capsys, out)
    figs = doc["attacks"]["gcg"]["model"]
    recs = _artifacts(out, 2)
    assert figs["behaviours"] == 2 and figs["asr"] == figs["asr@step2"] == sum(r["success"] for r in recs) / 2
    assert figs["mean_queries"] == sum(r["queries"] for r in recs) / 2
    advbench = shared_data("advbench/harmful_behaviors.csv")
    out = tmp_path / "adv"
    doc = _audit(
        [
            target_dir,
            "--suite",
            "refusal",
            "--harmful",
            f"advbench:{advbench}",
            "--attacks",
            "gcg",
            "--limit",
            "2",
            *options,
        ],
        capsys,
        out,
    )
    recs = _artifacts(out, 2)
    assert recs[0]["target"].startswith("Sure, here is") and doc["attacks"]["gcg"]["model"]["behaviours"] == 2


def test_universal_gcg_optimises_one_suffix(target_dir, world_dir, tmp_path, capsys):
    opts = ["steps=2", "search_width=8", "topk=8", "check_every=1", "suffix_tokens=3", "behaviours=3", "universal=true"]
    out = tmp_path / "u"
    doc = _audit(
        [
            target_dir,
            "--suite",
            "refusal",
            "--data",
            world_dir,
            "--attacks",
            "gcg",
            *[x for o in opts for x in ("--option", f"gcg.{o}")],
        ],
        capsys,
        out,
    )
    art = out / "artifacts" / "gcg" / "model"
    recs = [json.loads(x) for x in (art / "findings.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and len({r["suffix"] for r in recs}) == 1
    assert all(r["optimised_on"] >= 1 and r["curve"][0][0] == 1 for r in recs)
    steps = [json.loads(x) for x in (art / "steps.jsonl").read_text().splitlines()]
    assert {x["id"] for x in steps} == {"universal"} and steps[0]["step"] == 0
    assert doc["attacks"]["gcg"]["model"]["behaviours"] == 3


@pytest.mark.parametrize("option", ["gcg.steps=0", "gcg.search_width=-3", "gcg.check_every=0"])
def test_a_budget_below_one_is_one_line(target_dir, world_dir, tmp_path, capsys, option):
    key = option.split(".")[1].split("=")[0]
    assert_bad_input(
        [
            "audit",
            target_dir,
            "--suite",
            "refusal",
            "--data",
            world_dir,
            "--attacks",
            "gcg",
            "--option",
            option,
            "--out",
            tmp_path / "o",
        ],
        capsys,
        tmp_path / "o",
        f"gcg: {key} must be an integer >= 1",
    )
