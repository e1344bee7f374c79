"""Shards at one intra-op thread each: the result does not depend on the thread count, and the summed gradient is
the whole batch's."""

import threading

import numpy as np
import pytest
import torch

from obliviate.core.shards import map_shards, one_thread, sharded_backward
from obliviate.diffusion.model import T2IConfig, build_t2i, build_word_tokenizer, train_t2i


@pytest.fixture
def threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_map_shards_keeps_order_runs_at_one_thread_and_restores_the_count(threads):
    torch.set_num_threads(2)
    seen = []

    def fn(i):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return i * i

    assert map_shards(fn, list(range(6))) == [0, 1, 4, 9, 16, 25]
    assert {n for _, n in seen} == {1} and torch.get_num_threads() == 2
    with one_thread() as before:
        assert before == 2 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_sharded_gradient_is_the_batch_gradient():
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3)
    x, y = torch.randn(8, 5), torch.randn(8, 3)
    params = list(lin.parameters())
    full = torch.nn.functional.mse_loss(lin(x), y)
    want = torch.autograd.grad(full, params)
    parts = [slice(0, 3), slice(3, 8)]  # uneven shards: each contributes its sum over the batch's count
    loss = sharded_backward(lambda s: (lin(x[s]) - y[s]).pow(2).sum() / y.numel(), parts, params, threads=2)
    assert loss.item() == pytest.approx(full.item(), rel=1e-6)
    for p, g in zip(params, want):
        torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=1e-7)


def test_the_trained_model_is_the_same_at_one_and_two_threads(threads):
    # the image world's model size (channels 32/64 at 16x16, batch 64): large enough for torch to split its kernels
    # by thread count, which made a 2-thread model differ from a 1-thread one in every tensor after 3 steps
    captions = ["a striped red star", "a dotted blue circle", "a solid green square"]
    images = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    caps = [[captions[i % 3]] for i in range(12)]
    tok = build_word_tokenizer(captions)
    states = []
    for n in (1, 2):
        torch.set_num_threads(n)
        m = build_t2i(tok, T2IConfig(size=16, channels=(32, 64)), seed=0)
        train_t2i(m, images, caps, steps=2, batch_size=64, seed=0)
        assert torch.get_num_threads() == n
        states.append({**m.unet.state_dict(), **m.text_encoder.state_dict()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_the_factor_classifiers_are_the_same_at_one_and_two_threads(threads):
    from obliviate.diffusion.classifiers import ClassifierConfig, train_factor_classifiers
    from obliviate.diffusion.world import ImageWorldSpec

    states = []
    for n in (1, 2):
        torch.set_num_threads(n)
        clf = train_factor_classifiers(ImageWorldSpec(seed=0), config=ClassifierConfig(steps=5, pool=256, n_eval=16))
        states.append({f"{f}.{k}": v for f, m in clf.models.items() for k, v in m.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
