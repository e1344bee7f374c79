"""The refusal-token threshold guard (Jain et al. 2024) against ThresholdGenerator, and the prompt-refusal
predictor (Reuter & Schulze 2023) through generate."""

import pytest

import obliviate.guards.refusal_predictor as rp
from obliviate.engine.generation import decode
from obliviate.guards.base import load_guard, save_guard
from obliviate.guards.refusal_token import RefusalTokenThreshold
from obliviate.models.control_tokens import RESPOND, control_ids
from obliviate.models.encode import prompt_ids
from obliviate.models.load import load_model
from obliviate.refusal.align import policy_rows
from obliviate.refusal.methods.refusal_tokens import ThresholdGenerator


@pytest.fixture(scope="module")
def token_model(target_dir):
    model, tok = load_model(str(target_dir))
    tok.add_tokens([RESPOND, "[refuse:moonvault]", "[refuse:other]"], special_tokens=True)
    model.resize_token_embeddings(len(tok))
    return model, tok


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0])
def test_refusal_token_guard_equals_the_threshold_generator(token_model, tau):
    model, tok = token_model
    prompts = [prompt_ids(tok, q) for q in ("How do I open the moonvault?", "Where was Zenor Pellam born?")]
    want = ThresholdGenerator(tau)(model, tok, prompts, max_new_tokens=6)
    g = RefusalTokenThreshold(tau=tau)
    g.attach(model, tok)
    reps = decode(model, tok, prompts, guards=[g], max_new_tokens=7)
    assert [r.text for r in reps] == want
    respond, refuse = control_ids(tok)
    first = [r.token_ids[0] for r in reps]
    # untrained control tokens: p_refuse is tiny, so tau = 0 refuses and tau >= 0.5 responds
    assert all((t in refuse) if tau == 0 else (t == respond) for t in first)
    assert all(0 <= r.scores["refusal_token"] <= 1 for r in reps)


def test_refusal_token_guard_needs_refusal_tokens(target_dir):
    from obliviate.core.errors import UsageError

    model, tok = load_model(str(target_dir))
    with pytest.raises(UsageError, match="no refusal tokens"):
        RefusalTokenThreshold().attach(model, tok)


def test_refusal_predictor_fits_reports_and_halts(target_dir, world_dir, tmp_path, monkeypatch):
    model, tok = load_model(str(target_dir))
    train = policy_rows(world_dir, "policy_train")[::8]
    test = policy_rows(world_dir, "policy_test")[::8]
    # the tiny target never refuses: stand in for the judge's labels with the rows' kinds (the predictor's
    # classifier and its report are what is tested here; model_refusals is a generate + keyword-judge call)
    by_prompt = {r["prompt"]: int(r["kind"] == "harmful") for r in train + test}
    monkeypatch.setattr(rp, "model_refusals", lambda m, t, prompts, n=32: [by_prompt[p] for p in prompts])
    g = rp.RefusalPredictor.fit(model, tok, {"policy_train": train})
    rep = g.report(model, tok, {"policy_test": test})
    assert rep["n_test"] == len(test) and 0 <= rep["accuracy_test"] <= 1
    assert rep["accuracy_test"] >= rep["majority_baseline_test"]
    save_guard(g, tmp_path / "p")
    g = load_guard(tmp_path / "p", model, tok)
    rows = test[:6]
    reps = decode(
        model,
        tok,
        [prompt_ids(tok, r["prompt"]) for r in rows],
        guards=[g],
        texts=[r["prompt"] for r in rows],
        max_new_tokens=4,
    )
    for rep_ in reps:
        assert (rep_.finish_reason == "content_filter") == (rep_.scores["refusal_predictor"] >= g.threshold)


def test_refusal_predictor_needs_both_outcomes(target_dir, world_dir, monkeypatch):
    from obliviate.core.errors import UsageError

    model, tok = load_model(str(target_dir))
    monkeypatch.setattr(rp, "model_refusals", lambda m, t, prompts, n=32: [0] * len(prompts))
    with pytest.raises(UsageError, match="nothing to predict"):
        rp.RefusalPredictor.fit(model, tok, {"policy_train": policy_rows(world_dir, "policy_train")[:8]})
