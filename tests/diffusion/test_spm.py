"""SPM: the rank-1 adapter starts as a no-op and merges exactly, anchors are drawn at the concept's norm, and a few
erasure steps change only the attention projections of a copy."""

import random

import pytest
import torch

from obliviate.diffusion.erasers.spm import SPM, RankOneAdapter, anchor_embeddings, attention_linears
from obliviate.diffusion.model import T2IConfig, build_t2i, build_word_tokenizer


@pytest.fixture(scope="module")
def tiny():
    tok = build_word_tokenizer(["a striped red star", "a dotted blue circle"], max_length=8)
    return build_t2i(
        tok, T2IConfig(size=8, channels=(16, 32), text_dim=32, text_layers=1, text_heads=2, max_length=8), seed=0
    )


def test_rank_one_adapter_is_a_no_op_at_start_and_merges_exactly():
    torch.manual_seed(0)
    base = torch.nn.Linear(5, 3)
    x = torch.randn(4, 5)
    want = base(x)
    a = RankOneAdapter(base, alpha=0.5)
    assert torch.allclose(a(x), want)
    with torch.no_grad():
        a.B.copy_(torch.tensor([[1.0], [-2.0], [0.5]]))
        a.A.copy_(torch.tensor([[1.0, 0.0, 2.0, 0.0, -1.0]]))
    # by hand: y = base(x) + 0.5 * (x . A) * B
    by_hand = want + 0.5 * (x @ torch.tensor([1.0, 0.0, 2.0, 0.0, -1.0])).unsqueeze(1) * torch.tensor([1.0, -2.0, 0.5])
    adapted = a(x)
    assert torch.allclose(adapted, by_hand, atol=1e-6)
    assert torch.allclose(a.merged()(x), by_hand, atol=1e-6)


def test_anchor_embeddings_keep_the_concepts_norm():
    c = torch.randn(8, 32)
    anc = anchor_embeddings(c, 16, random.Random(0), torch.Generator().manual_seed(0))
    ratio = anc.flatten(1).norm(dim=1) / c.norm()
    assert anc.shape == (16, 8, 32) and bool(((ratio >= 0.8 - 1e-6) & (ratio <= 1.2 + 1e-6)).all())


def test_a_few_steps_move_only_attention_projections(tiny):
    before = {n: p.clone() for n, p in tiny.unet.named_parameters()}
    targets = {id(getattr(parent, attr) if attr != "0" else parent[0]) for parent, attr in attention_linears(tiny.unet)}
    eraser = SPM(steps=3, lr=1e-2, batch_size=2, anchors=2, ddim_steps=3)
    edited = eraser.erase(tiny, "star", preserve=("circle",))
    # at step 1 the adapters are no-ops, so the anchoring term is exactly 0 and the loss is the erasure term alone
    assert len(eraser.history) == 3 and all(torch.isfinite(torch.tensor(eraser.history)))
    assert not any(isinstance(m, RankOneAdapter) for m in edited.unet.modules())  # merged away
    names = {id(m): n for n, m in tiny.unet.named_modules()}
    allowed = {names[i] + ".weight" for i in targets}
    changed = {n for n, p in edited.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= allowed
    assert all(torch.equal(p, before[n]) for n, p in tiny.unet.named_parameters())
