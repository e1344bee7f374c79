"""score_model scores every split as one union: the same rows as scoring each split on its own."""

import pytest

from obliviate.benchmarks.layouts import eval_data
from obliviate.engine.evaluate import score_model, score_split
from obliviate.models.load import load_model


def test_score_model_pooled_equals_per_split(target_dir, world_dir):
    model, tok = load_model(str(target_dir))
    data = {s: items[:5] for s, items in eval_data(world_dir).items()}
    pooled = score_model(model, tok, data, max_new_tokens=6)
    assert list(pooled) == list(data)
    for split, items in data.items():
        alone = score_split(model, tok, items, max_new_tokens=6)
        assert [r["id"] for r in pooled[split]] == [it.id for it in items]
        for a, b in zip(pooled[split], alone):
            assert a["generated"] == b["generated"]
            assert a["gt_loss"] == pytest.approx(b["gt_loss"], abs=1e-5)
            assert a["perturbed_loss"] == pytest.approx(b["perturbed_loss"], abs=1e-5)
            assert a["pred_ids"] == b["pred_ids"]


def _shared_vs_full(model, tok, items):
    """Every item's answers, all items in one batch of groups (prompts of different lengths: left padding),
    against full sequences one item at a time."""
    from obliviate.engine.evaluate import _forward_stats, _shared_prompt_stats
    from obliviate.models.encode import answer_ids, encode_pair, prompt_ids

    texts = [[it.answer, it.paraphrased_answer, *it.perturbed_answer] for it in items]
    groups = [(prompt_ids(tok, it.question), [answer_ids(tok, a) for a in ts]) for it, ts in zip(items, texts)]
    assert len({len(p) for p, _ in groups}) > 1  # the batch needs padding
    shared = _shared_prompt_stats(model, groups, tok.pad_token_id)
    checked = 0
    for it, ts, got in zip(items, texts, shared):
        full = _forward_stats(model, [encode_pair(tok, it.question, a) for a in ts], tok.pad_token_id, 64)
        assert len(got) == len(full) == len(ts)
        for k, (a, b) in enumerate(zip(got, full)):
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
            if k == 0:  # the true answer carries every per-token statistic
                assert a["pred_ids"] == b["pred_ids"] and a["target_ids"] == b["target_ids"]
                assert a["token_logps"] == pytest.approx(b["token_logps"], abs=1e-4)
                assert a["token_z"] == pytest.approx(b["token_z"], abs=1e-3)
            else:
                assert "token_logps" not in a
            checked += 1
    return checked


def test_shared_prompt_stats_equal_full_sequences(target_dir, world_dir):
    model, tok = load_model(str(target_dir))
    data = eval_data(world_dir)
    assert _shared_vs_full(model, tok, data["forget"][:3] + data["holdout"][:3]) >= 6 * 3


def test_shared_prompt_stats_equal_full_sequences_on_the_real_model(real_model_dir, world_dir):
    model, tok = load_model(str(real_model_dir))
    data = eval_data(world_dir)
    assert _shared_vs_full(model, tok, data["forget"][:2] + data["holdout"][:1]) >= 3 * 3


def test_guarded_model_scores_full_sequences(target_dir, world_dir, monkeypatch):
    """A guard's prompt edits are per sequence: with one attached, the shared-prompt path is never taken."""
    import obliviate.engine.evaluate as ev
    from obliviate.engine.hooks import attach

    model, tok = load_model(str(target_dir))
    calls = []
    monkeypatch.setattr(ev, "_shared_prompt_stats", lambda *a: calls.append(1))
    attach(model, [object()])
    try:
        with pytest.raises(AttributeError):  # the placeholder guard has no hooks: the full path tried to use it
            score_split(model, tok, eval_data(world_dir)["forget"][:2], max_new_tokens=2)
    finally:
        attach(model, [])
    assert calls == []


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "opt", "gpt_neox", "falcon", "gemma2", "olmo2"])
def test_shared_prompt_stats_on_every_family(family):
    """Prompt sharing needs nothing of an architecture but its cache: the same statistics on tiny random models
    of several families (sliding-window and post-norm ones included)."""
    from tests.models.test_anatomy import FAMILIES, _model

    assert family in FAMILIES
    _assert_shared_equals_full(
        _model(family),
        [([1, 5, 9, 13, 7, 3], [[11, 12, 2], [20, 2], [30, 31, 32, 33, 2]]), ([1, 6, 3], [[40, 41, 2], [42, 2]])],
    )  # shorter: left padding


def _assert_shared_equals_full(model, groups):
    """Every group's answers scored as continuations of one shared prompt pass equal full sequences."""
    import torch

    from obliviate.engine.evaluate import _forward_stats, _shared_prompt_stats
    from obliviate.models.encode import IGNORE

    with torch.no_grad():
        shared = _shared_prompt_stats(model, groups, 0)
        for (prompt, answers), got in zip(groups, shared):
            full = _forward_stats(model, [(prompt + a, [IGNORE] * len(prompt) + a) for a in answers], 0, 8)
            assert [s["loss"] for s in got] == pytest.approx([f["loss"] for f in full], abs=1e-5)
            assert got[0]["token_logps"] == pytest.approx(full[0]["token_logps"], abs=1e-5)
            assert got[0]["pred_ids"] == full[0]["pred_ids"]


@pytest.mark.parametrize("family", ["gemma3_text", "gpt_oss", "lfm2", "mistral", "qwen3_next"])
def test_shared_prompt_stats_past_a_sliding_window_and_on_hybrid_caches(family):
    """The prompt pass fills caches that keep only a window (Mistral, Gemma 3, gpt-oss: window 4 < the 9-token
    prompt) or a convolution / recurrent state (LFM2, Qwen3-Next); repeating its rows for the answers must carry
    all of them (`batch_select_indices` does not exist on linear-attention layers)."""
    from tests.engine.test_decode_loop import REWIND_FAMILIES, rewind_model

    assert family in REWIND_FAMILIES
    _assert_shared_equals_full(
        rewind_model(family),
        [
            ([1, 5, 9, 13, 7, 3, 8, 9, 10], [[11, 12, 2], [20, 2], [30, 31, 32, 33, 2, 5, 6]]),
            ([1, 6, 3], [[40, 41, 2], [42, 2]]),
        ],
    )


def test_forward_stats_within_a_logits_budget_are_the_same(target_dir, world_dir, monkeypatch):
    """Teacher-forced statistics in runs whose tokens x vocabulary stay within a budget (long documents would
    build [64, 511, V] logits at once): the same rows, in the same order, as whole batches."""
    import functools

    import obliviate.engine.evaluate as ev
    from obliviate.data.schema import load_qa
    from obliviate.models.encode import encode_pair, logits_runs

    model, tok = load_model(str(target_dir))
    items = load_qa(world_dir / "forget10.jsonl")[:12]
    encoded = [encode_pair(tok, it.question, " ".join([it.answer] * (1 + i % 4))) for i, it in enumerate(items)]
    whole = ev._forward_stats(model, encoded, tok.pad_token_id, 64)
    vocab = model.get_output_embeddings().weight.shape[0]
    runs = list(logits_runs(model, list(range(12)), 5, lambda i: len(encoded[i][0]), max_logits=60 * vocab))
    assert [i for r in runs for i in r] == list(range(12)) and all(len(r) <= 5 for r in runs)
    assert all(len(r) * max(len(encoded[i][0]) for i in r) <= 60 or len(r) == 1 for r in runs)
    monkeypatch.setattr(ev, "logits_runs", functools.partial(logits_runs, max_logits=60 * vocab))
    cut = ev._forward_stats(model, encoded, tok.pad_token_id, 64)
    assert len(cut) == len(whole) == 12
    for a, b in zip(whole, cut):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["pred_ids"] == b["pred_ids"]
