"""ECO (Liu et al. 2024): the corruptions by hand, the conformal gate threshold against a worked example, and the
guard through generate and through the teacher-forced pass of evaluate."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from obliviate.data.schema import load_qa
from obliviate.engine.evaluate import score_split
from obliviate.engine.generation import Row, decode, generate
from obliviate.engine.hooks import attach
from obliviate.guards.base import load_guard, save_guard
from obliviate.guards.eco import ECO, corrupt
from obliviate.guards.text_classifier import TfidfLogistic, conformal_threshold
from obliviate.models.encode import prompt_ids
from obliviate.models.load import load_model


def test_noise_first_k_touches_only_the_first_k_dimensions_with_seeded_noise():
    e = torch.arange(12.0).reshape(3, 4)
    out = corrupt(e, "noise_first_k", 2, 5.0, seed=7)
    g = torch.Generator().manual_seed(7)
    assert torch.equal(out[:, 2:], e[:, 2:])
    assert torch.allclose(out[:, :2], e[:, :2] + 5.0 * torch.randn(3, 2, generator=g))
    assert torch.equal(out, corrupt(e, "noise_first_k", 2, 5.0, seed=7))  # same seed, same corruption


def test_zero_and_flip_top_k_by_hand():
    e = torch.tensor([[1.0, -5.0, 3.0, 0.5]])
    assert corrupt(e, "zero_top_k", 2, 0.0, 0).tolist() == [[1.0, 0.0, 0.0, 0.5]]
    assert corrupt(e, "flip_top_k", 2, 0.0, 0).tolist() == [[1.0, 5.0, -3.0, 0.5]]


def test_conformal_threshold_worked_example():
    scores = [0.2, 0.9, 0.5, 0.7, 0.95, 0.6, 0.8, 0.85, 0.3]  # n = 9
    # miss rate 0.2: floor(0.2 * 10) = 2 -> the 2nd smallest score, 0.3: one of nine calibration scores is missed
    assert conformal_threshold(scores, 0.2) == 0.3
    assert conformal_threshold(scores, 0.05) == 0.2  # floor(0.5) = 0 -> the smallest: miss none


def test_tfidf_gate_state_roundtrip():
    c = TfidfLogistic().fit(["where was Zenor born", "Zenor's job", "where was Abel born", "Abel's job"], [1, 1, 0, 0])
    c2 = TfidfLogistic.from_state(c.state())
    texts = ["Zenor home?", "Abel home?", ""]
    assert np.allclose(c.proba(texts), c2.proba(texts))
    assert c.proba(["Zenor home?"])[0] > 0.5 > c.proba(["Abel home?"])[0]


@pytest.fixture(scope="module")
def setup(target_dir, world_dir):
    model, tok = load_model(str(target_dir))
    forget = load_qa(world_dir / "forget10.jsonl")[:24]
    retain = load_qa(world_dir / "retain90.jsonl")[:60]
    return model, tok, {"forget": forget, "retain": retain, "retain_train": retain}


def test_eco_gate_and_corruption_through_generate(setup, tmp_path):
    model, tok, inputs = setup
    g = ECO.fit(model, tok, inputs, sigma=50.0)
    assert g.sigma == 50.0  # given, not searched
    rep = g.report(model, tok, inputs)
    assert rep["gate_flag_rate_forget"] >= 0.9 and rep["gate_flag_rate_retain"] <= 0.1
    save_guard(g, tmp_path / "eco")
    g = load_guard(tmp_path / "eco", model, tok)
    items = inputs["forget"][:3] + inputs["retain"][:3]
    ids = [prompt_ids(tok, it.question) for it in items]
    texts = [it.question for it in items]
    plain = decode(model, tok, ids, guards=[], max_new_tokens=8)
    guarded = decode(model, tok, ids, guards=[g], texts=texts, max_new_tokens=8)
    for p, q in zip(plain, guarded):
        if q.scores["eco"] < g.threshold:
            assert q.text == p.text  # unflagged prompts are untouched
    assert any(q.scores["eco"] >= g.threshold for q in guarded)
    # the corruption itself: flagged rows' embeddings differ only in dimension 0 of their prompt tokens
    rows = [Row(i, t) for i, t in enumerate(texts)]
    for r in rows:
        r.scores["eco"] = g.on_request(r.text)
    from obliviate.engine.generation import left_pad

    x, mask = left_pad(ids, tok.pad_token_id)
    e = model.get_input_embeddings()(x)
    out = g.edit_embeddings(e, mask, rows)
    for r, row in enumerate(rows):
        changed = (out[r] != e[r]).any(-1)
        if g.flagged(row):
            assert changed.sum() == mask[r].sum() and torch.equal(out[r, :, 1:], e[r, :, 1:])
        else:
            assert not changed.any()


def test_eco_in_the_teacher_forced_pass(setup):
    model, tok, inputs = setup
    g = ECO.fit(model, tok, inputs, sigma=100.0)
    items = inputs["forget"][:4] + inputs["retain"][:4]
    plain = score_split(model, tok, items, max_new_tokens=4)
    attach(model, [g])
    try:
        guarded = score_split(model, tok, items, max_new_tokens=4)
    finally:
        attach(model, [])
    flagged = [g.on_request(it.question) >= g.threshold for it in items]
    assert any(flagged) and not all(flagged)
    for f, a, b in zip(flagged, plain, guarded):
        if f:
            assert a["gt_loss"] != pytest.approx(b["gt_loss"], abs=1e-6)
        else:
            assert a["gt_loss"] == pytest.approx(b["gt_loss"], abs=1e-6)


def test_eco_searches_sigma_to_the_smallest_that_reaches_the_target(setup):
    """Each forget item's `value` is the model's own uncorrupted greedy reply, so the forget accuracy at sigma is the
    share of replies the corruption leaves unchanged: 1 at a negligible sigma, falling as sigma grows. Bisection on
    log sigma over [1e-2, 1e3] with 3 steps ends on a bracket (lo, hi] of ratio (1e5)^(1/8): the sigma returned,
    hi, must reach the target, and lo (the last step that missed, here tested again) must miss it."""
    model, tok, inputs = setup
    searched = inputs["forget"][:12]  # the others keep no value: the gate trains on them, the search skips them
    plain = generate(model, tok, [prompt_ids(tok, it.question) for it in searched], max_new_tokens=24, guards=[])
    forget = [replace(it, value=o) for it, o in zip(searched, plain)]
    items = [it for it in forget if it.value]
    forget += [replace(it, value="") for it in inputs["forget"][12:]]
    assert len(items) >= 10
    g = ECO.fit(model, tok, inputs | {"forget": forget}, target_accuracy=0.5, search_steps=3)

    def acc(sigma):
        return g.forget_accuracy(model, tok, items, sigma)

    assert acc(1e-2) == 1.0  # the bottom of the range misses the target
    assert g.sigma < 1e3  # found: the top of the range reaches it
    assert acc(g.sigma) <= 0.5
    below = g.sigma / 1e5 ** (1 / 2**3)  # the previous step of the search
    assert below >= 1e-2 * (1 - 1e-9) and acc(below) > 0.5
