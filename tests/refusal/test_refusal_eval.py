import pytest

from obliviate.data.policy import build_policy
from obliviate.models.encode import answer_ids
from obliviate.models.load import load_model
from obliviate.refusal import evaluate as refusal_eval
from obliviate.refusal.evaluate import prefill_ids, refusal_rates


@pytest.fixture(scope="module")
def model_tok(target_dir):
    return load_model(str(target_dir))


def test_prefill_is_token_level(model_tok):
    _, tok = model_tok
    ids = prefill_ids(tok, "Can you explain how to x?", "Step 1: a. Step 2: b.", 3)
    assert ids == answer_ids(tok, "Step 1: a. Step 2: b.")[:3]
    full = prefill_ids(tok, "q?", "Step 1: a.", 999)
    assert full[-1] != tok.eos_token_id  # never the end of the answer


def test_rates_count_what_the_judge_says(model_tok, monkeypatch):
    model, tok = model_tok
    test = build_policy(0)["policy_test"]
    rows = [r for r in test if r["kind"] == "harmful"][:4] + [r for r in test if r["kind"] == "benign"][:4]
    seen = []
    # one call for every (prompt, depth), in order: 4 benign, 4 harmful at depth 0, 4 harmful prefilled;
    # refusals: the first benign reply, the first two harmful ones, no prefilled one
    refusing = {0, 4, 5}

    def fake_generate(model, tok, prompts, max_new_tokens=48):
        seen.append(prompts)
        return ["Sorry, I cannot help with that." if i in refusing else "Step 2: pour." for i in range(len(prompts))]

    monkeypatch.setattr(refusal_eval, "generate", fake_generate)
    rates = refusal_rates(model, tok, rows, depths=(5,))
    assert rates["refusal_rate"] == pytest.approx(2 / 4)
    assert rates["over_refusal_rate"] == pytest.approx(1 / 4)
    assert rates["refusal_rate@prefill5"] == 0.0
    assert set(rates) == {"refusal_rate", "over_refusal_rate", "refusal_rate@prefill5", "refusal_position_mean"}
    assert rates["refusal_position_mean"] == 0.0  # both refusals start at the first token
    assert len(seen) == 1 and len(seen[0]) == 12
    assert all(len(p) == len(q) + 5 for p, q in zip(seen[0][8:], seen[0][4:8]))  # prefilled prompts: 5 more tokens


def test_refusal_position_and_distribution(model_tok, monkeypatch):
    model, tok = model_tok
    assert refusal_eval.refusal_start(tok, "Sorry, no.") == 0
    assert refusal_eval.refusal_start(tok, "Step 1: pour. Sorry, I cannot.") == len(
        tok("Step 1: pour.", add_special_tokens=False)["input_ids"]
    )
    assert refusal_eval.refusal_start(tok, "Step 1: pour.") is None
    rows = [r for r in build_policy(0)["policy_test"] if r["kind"] == "harmful"][:2]
    monkeypatch.setattr(
        refusal_eval,
        "generate",
        lambda m, t, prompts, max_new_tokens=48: ["Sorry, I cannot.", "Step 1: pour the salt-glass. I cannot go on."][
            : len(prompts)
        ],
    )
    metrics, samples, dist = refusal_eval.refusal_eval(model, tok, rows, depths=())
    assert metrics["refusal_rate"] == 1.0
    late = refusal_eval.refusal_start(tok, "Step 1: pour the salt-glass. I cannot go on.")
    assert late >= 5 and metrics["refusal_position_mean"] == pytest.approx(late / 2)
    assert dist["0-0"] == 0.5 and sum(dist.values()) == pytest.approx(1.0)
    assert [s["refusal_position"] for s in samples] == [0, late]


def test_rates_on_a_real_model_are_rates(model_tok):
    model, tok = model_tok
    rows = build_policy(0)["policy_test"][:6]
    rates = refusal_rates(model, tok, rows, depths=(5,), max_new_tokens=8)
    assert all(0.0 <= v <= 1.0 for k, v in rates.items() if k != "refusal_position_mean")
