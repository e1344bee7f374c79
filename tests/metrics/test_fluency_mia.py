"""Fluency (seq-rep), the collapse thresholds, and the Reference and GradNorm MIAs against hand-computed values."""

import pytest
import torch

from obliviate.metrics import METRICS
from obliviate.metrics.fluency import collapse_reasons, fluency, seq_rep, split_fluency
from obliviate.metrics.mia import gradnorm_score, reference_score


def test_seq_rep_and_fluency_by_hand():
    # Welleck et al.'s seq-rep-n = 1 - unique n-grams / n-grams
    assert seq_rep(["a", "b", "a", "b", "a", "b"], 2) == pytest.approx(1 - 2 / 5)  # ab ba ab ba ab
    assert seq_rep(["a", "a", "a"], 1) == pytest.approx(1 - 1 / 3)
    assert seq_rep(["a"], 2) == 0.0  # no bigram
    assert fluency("Mira was born in Velden, in 1873.") == 1.0  # 9 units (7 words, "," and "."), 8 distinct bigrams
    assert fluency("the the the the") == pytest.approx(1 / 3)  # 3 bigrams, 1 distinct
    assert fluency("The the THE the") == pytest.approx(1 / 3)  # lower-cased words
    assert fluency("a b a b a b") == pytest.approx(0.4)
    assert fluency("Velden") == 1.0
    assert fluency("") == 0.0 and fluency(" ... !!") == 0.0  # no word at all
    # words and single symbols are units: a run of replacement characters (broken byte-level tokens) repeats
    assert fluency("ame" + "\ufffd" * 30) == pytest.approx(2 / 30)  # 30 bigrams, 2 distinct: (ame, �), (�, �)
    # a word that repeats one short pattern is that many units: 32 units "n", 31 bigrams, 1 distinct
    assert fluency("N" * 32) == pytest.approx(1 / 31) and fluency("ameameame velden") == pytest.approx(2 / 3)
    # 12 units, 11 bigrams, of which (in, velden) and (",", in) come twice
    assert fluency("Mira was born in Velden, in 1873, in Velden.") == pytest.approx(1 - 2 / 11)


def test_split_fluency_and_its_registered_metrics():
    rows = [{"generated": "the the the the"}, {"generated": "in Velden"}]
    assert split_fluency(rows) == pytest.approx((1 / 3 + 1) / 2)
    sampled = [{"generated": ["a b a b a b", ""]}, {"generated": ["in Velden", "x y"]}]  # --samples 2: 4 answers
    assert split_fluency(sampled) == pytest.approx((0.4 + 0 + 1 + 1) / 4)
    ctx = {"forget": rows, "retain": sampled}
    assert METRICS.get("forget_fluency").fn(ctx) == pytest.approx(2 / 3)
    assert METRICS.get("retain_fluency").fn(ctx) == pytest.approx(0.6)
    assert METRICS.get("forget_fluency").higher_is_better is True


def test_collapse_reasons_thresholds():
    assert collapse_reasons({"forget_fluency": 0.98, "retain_fluency": 1.0, "privleak": -3.0}) == []
    assert collapse_reasons({"forget_fluency": 0.5, "privleak": 50.0}) == []  # at the thresholds: not yet
    assert collapse_reasons({"forget_fluency": 0.12, "retain_fluency": 0.9, "privleak": 5215.0}) == [
        "forget_fluency 0.120 < 0.5",
        "privleak 5215.0 > 50",
    ]
    assert collapse_reasons({"privleak": None}) == []  # undefined privleak (the oracle's AUC is 1)
    # a RESTOR world: privleak measures the correction of the misinformation, not collapse
    assert collapse_reasons({"privleak": 70.0, "recovered_acc": 0.7}) == []


def _rows(logps, ids):
    return [{"id": i, "token_logps": lp} for i, lp in zip(ids, logps)]


def test_reference_mia_auc_by_hand():
    """Scores mean log p(model) - mean log p(oracle): forget 2 and 0, holdout -0.5 and 1; of the 4 (member,
    non-member) pairs the member scores higher in 3: AUC 0.75. The plain LOSS attack on the same model: forget
    -1 and -2, holdout -1 and -4: 2.5 of 4 (a tie counts half), AUC 0.625."""
    assert reference_score([-1.0, -1.0], [-3.0]) == pytest.approx(2.0)
    ctx = {
        "forget": _rows([[-1.0, -1.0], [-2.0]], ["f1", "f2"]),
        "holdout": _rows([[-1.5, -0.5], [-4.0]], ["h1", "h2"]),
        # the oracle's rows in another order: matched by id
        "oracle": {
            "forget": _rows([[-2.0, -2.0], [-3.0]], ["f2", "f1"]),
            "holdout": _rows([[-5.0], [-0.5]], ["h2", "h1"]),
        },
    }
    assert METRICS.get("mia_reference_auc").fn(ctx) == pytest.approx(0.75)
    assert METRICS.get("mia_loss_auc").fn(ctx) == pytest.approx(0.625)
    # the oracle against itself: every score 0, AUC 0.5
    own = {**ctx["oracle"], "oracle": ctx["oracle"]}
    assert METRICS.get("mia_reference_auc").fn(own) == pytest.approx(0.5)


def test_gradnorm_mia_auc_by_hand():
    """Scores -|g|: forget -0.1, -0.5; holdout -0.3, -0.9: 3 of 4 pairs, AUC 0.75. Absent without grad norms."""
    assert gradnorm_score(0.25) == -0.25
    ctx = {"forget": [{"grad_norm": 0.1}, {"grad_norm": 0.5}], "holdout": [{"grad_norm": 0.3}, {"grad_norm": 0.9}]}
    assert METRICS.get("mia_gradnorm_auc").fn(ctx) == pytest.approx(0.75)
    assert METRICS.get("mia_gradnorm_auc").fn({"forget": [{}], "holdout": [{"grad_norm": 1.0}]}) is None


def test_grad_norms_match_a_backward_pass(tiny_dir, world_dir):
    """`grad_norms` against loss.backward() by hand (OpenUnlearning's way): the mean over parameter tensors of
    each gradient's 2-norm; the model's flags and mode are left as they were."""
    from obliviate.data.schema import load_qa
    from obliviate.engine.evaluate import grad_norms, score_model
    from obliviate.models.encode import collate, encode_pair, sequence_logp
    from obliviate.models.load import load_model

    model, tok = load_model(str(tiny_dir))
    items = load_qa(world_dir / "forget10.jsonl")[:2]
    model.requires_grad_(False)
    with torch.no_grad():  # a caller under no_grad
        got = grad_norms(model, tok, items)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    model.requires_grad_(True)
    for item, g in zip(items, got):
        model.zero_grad()
        logp, n = sequence_logp(model, collate([encode_pair(tok, item.question, item.answer)], tok.pad_token_id))
        (-(logp / n).sum()).backward()
        norms = [p.grad.norm() for p in model.parameters() if p.grad is not None]
        assert g == pytest.approx(float(sum(norms) / len(norms)), rel=1e-5)
    data = {"forget": items, "retain": items[:1], "holdout": items[1:]}
    rows = score_model(model, tok, data, grad_norm=True, max_new_tokens=2)
    assert [r.get("grad_norm") for r in rows["forget"]] == pytest.approx(got, rel=1e-5)
    assert "grad_norm" not in rows["retain"][0] and rows["holdout"][0]["grad_norm"] == pytest.approx(got[1], rel=1e-5)
    assert "grad_norm" not in score_model(model, tok, data, max_new_tokens=2)["forget"][0]  # only when asked
