"""Sampling in the decode loop (`engine.sampling`): top-k / top-p filtering against hand-computed values and
transformers' warpers, seeded draws equal to `model.generate(do_sample=True)`, the greedy limit, and guards that
still apply when tokens are drawn."""

import math

import pytest
import torch

from obliviate.core.errors import UsageError
from obliviate.engine.generation import decode, generate
from obliviate.engine.sampling import Sampling, filtered, pick
from obliviate.models.encode import prompt_ids
from obliviate.models.load import load_model
from tests.engine.test_decode_loop import QUESTIONS, Ban, HaltAt

INF = float("-inf")


@pytest.fixture(scope="module")
def model_tok(target_dir):
    return load_model(str(target_dir))


def test_top_k_and_top_p_filter_hand_computed_values():
    x = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    # softmax: 0.6439, 0.2369, 0.0871, 0.0321; the ascending cumulative mass: 0.0321, 0.1192, 0.3561, 1.0
    assert filtered(x, top_k=2).tolist() == [[2.0, 1.0, INF, INF]]
    assert filtered(x, top_p=0.9).tolist() == [[2.0, 1.0, 0.0, INF]]  # drops the tail of mass <= 0.1: 0.0321
    assert filtered(x, top_p=0.8).tolist() == [[2.0, 1.0, INF, INF]]  # 0.1192 <= 0.2
    assert filtered(x, top_p=0.5).tolist() == [[2.0, INF, INF, INF]]  # 0.3561 <= 0.5
    assert filtered(x, top_p=0.01).tolist() == [[2.0, INF, INF, INF]]  # the most likely token always stays
    # top-k first, then top-p on what is left: [2, 1, 0] renormalised is 0.6652, 0.2447, 0.0900, and 0.0900 <= 0.1
    assert filtered(x, top_k=3, top_p=0.9).tolist() == [[2.0, 1.0, INF, INF]]
    # a tie with the k-th largest logit is kept, as transformers' TopKLogitsWarper keeps it
    assert filtered(torch.tensor([[1.0, 1.0, 0.0]]), top_k=1).tolist() == [[1.0, 1.0, INF]]
    assert filtered(x).tolist() == x.tolist()  # top_k 0 and top_p 1: nothing removed


def test_filters_equal_transformers_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 50, generator=g) * 3
    for k in (1, 2, 7, 50, 80):
        assert torch.equal(filtered(x, top_k=k), TopKLogitsWarper(k)(None, x))
    for p in (0.05, 0.3, 0.9, 0.99):
        assert torch.equal(filtered(x, top_p=p), TopPLogitsWarper(p)(None, x))
        assert torch.equal(filtered(x, top_k=10, top_p=p), TopPLogitsWarper(p)(None, TopKLogitsWarper(10)(None, x)))


def test_pick_draws_only_kept_tokens_with_their_probabilities():
    x = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(20000, -1)
    drawn = pick(x, Sampling(top_p=0.9, seed=1), torch.Generator().manual_seed(1))
    counts = torch.bincount(drawn, minlength=4).float() / len(drawn)
    assert counts[3] == 0  # outside the nucleus
    kept = torch.tensor([math.exp(2), math.exp(1), 1.0])
    assert torch.allclose(counts[:3], kept / kept.sum(), atol=0.015)
    hot = pick(x, Sampling(temperature=0.5), torch.Generator().manual_seed(1))  # logits / 0.5: e^4, e^2, 1, e^-2
    assert abs(float((hot == 0).float().mean()) - math.exp(4) / (math.exp(4) + math.exp(2) + 1 + math.exp(-2))) < 0.015


def test_bad_sampling_settings_are_usage_errors():
    for bad in ({"temperature": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}):
        with pytest.raises(UsageError):
            Sampling(**bad)


def _hf_sample(model, tok, prompt, n, s: Sampling):
    ids = torch.tensor([prompt])
    torch.manual_seed(s.seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=True,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    return out[0, ids.shape[1] :].tolist()


def test_seeded_sampling_equals_transformers_sampling(model_tok):
    model, tok = model_tok
    for s in (Sampling(temperature=1.5, seed=3), Sampling(temperature=0.7, top_k=20, top_p=0.9, seed=11)):
        for q in QUESTIONS[:2]:
            p = prompt_ids(tok, q)
            ours = decode(model, tok, [p], max_new_tokens=16, sampling=s)[0].token_ids
            assert ours == _hf_sample(model, tok, p, 16, s)


def test_seeded_sampling_is_reproducible_and_greedy_is_unchanged(model_tok):
    model, tok = model_tok
    prompts = [prompt_ids(tok, q) for q in QUESTIONS]
    hot = Sampling(temperature=2.0, seed=5)
    a = generate(model, tok, prompts, max_new_tokens=16, sampling=hot)
    assert a == generate(model, tok, prompts, max_new_tokens=16, sampling=hot)
    assert a != generate(model, tok, prompts, max_new_tokens=16, sampling=Sampling(temperature=2.0, seed=6))
    greedy = generate(model, tok, prompts, max_new_tokens=16)
    assert a != greedy
    # temperature towards 0, or top_k 1: the draw is the argmax
    assert generate(model, tok, prompts, max_new_tokens=16, sampling=Sampling(temperature=1e-4, seed=5)) == greedy
    assert generate(model, tok, prompts, max_new_tokens=16, sampling=Sampling(top_k=1, seed=5)) == greedy
    assert generate(model, tok, prompts, max_new_tokens=16, sampling=Sampling(top_p=1e-6, seed=5)) == greedy


def test_guards_still_apply_under_sampling(model_tok):
    model, tok = model_tok
    prompts = [prompt_ids(tok, q) for q in QUESTIONS[:2]]
    hot = Sampling(temperature=2.0, seed=0)
    reps = decode(model, tok, prompts, guards=[HaltAt()], max_new_tokens=8, batch_size=1, sampling=hot)
    assert all(r.text == "No." and r.finish_reason == "content_filter" and r.halted_by == "halt_at" for r in reps)
    # a logits edit comes before the draw: with top_k 1 the draw is the argmax of the guarded logits
    first = decode(model, tok, prompts[:1], max_new_tokens=1)[0].token_ids[0]
    banned = decode(model, tok, prompts[:1], guards=[Ban(first)], max_new_tokens=1, sampling=Sampling(top_k=1))
    assert banned[0].token_ids[0] != first
    hot_draws = decode(model, tok, prompts[:1] * 32, guards=[Ban(first)], max_new_tokens=1, sampling=hot)
    assert all(r.token_ids[0] != first for r in hot_draws)
