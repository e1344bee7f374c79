"""Forget-Me-Not: the attention re-steering loss by hand, the recorder leaves the UNet's output unchanged, and a few
steps move only cross-attention weights while lowering the concept's attention."""

import pytest
import torch

from obliviate.core.errors import UsageError
from obliviate.diffusion.erasers.forget_me_not import (
    ForgetMeNot,
    RecordCrossAttention,
    attention_resteering_loss,
    concept_positions,
)
from obliviate.diffusion.model import T2IConfig, build_t2i, build_word_tokenizer


@pytest.fixture(scope="module")
def tiny():
    tok = build_word_tokenizer(["a striped red star", "a dotted blue circle"], max_length=8)
    return build_t2i(
        tok, T2IConfig(size=8, channels=(16, 32), text_dim=32, text_layers=1, text_heads=2, max_length=8), seed=0
    )


def test_loss_by_hand():
    p1 = torch.tensor([[[0.2, 0.5, 0.3]]])
    p2 = torch.tensor([[[0.1, 0.6, 0.3], [0.4, 0.4, 0.2]]])
    # position 1 of every row: 0.5, 0.6, 0.4 -> sqrt(0.25 + 0.36 + 0.16)
    assert float(attention_resteering_loss([p1, p2], [1])) == pytest.approx(0.77**0.5, abs=1e-6)


def test_concept_positions(tiny):
    assert concept_positions(tiny, "a striped red star", "star") == [4]  # BOS a striped red star
    with pytest.raises(UsageError, match="does not occur"):
        concept_positions(tiny, "a dotted blue circle", "star")


def test_recording_leaves_the_output_unchanged(tiny):
    z, t, ctx = torch.randn(2, 3, 8, 8), torch.tensor([10, 500]), tiny.encode(["a red star", "a blue circle"])
    with torch.no_grad():
        plain = tiny.eps(z, t, ctx)
        with RecordCrossAttention(tiny.unet) as rec:
            recorded = tiny.eps(z, t, ctx)
    assert torch.allclose(plain, recorded, atol=1e-5)
    n_cross = sum(getattr(m, "is_cross_attention", False) for m in tiny.unet.modules())
    assert len(rec.probs) == n_cross > 0
    for p in rec.probs:  # softmax over the text tokens
        assert torch.allclose(p.sum(-1), torch.ones_like(p.sum(-1)), atol=1e-5)
    assert all("get_attention_scores" not in vars(m) for m in tiny.unet.modules())


def test_a_few_steps_lower_the_concepts_attention_and_touch_only_cross_attention(tiny):
    before = {n: p.clone() for n, p in tiny.unet.named_parameters()}
    eraser = ForgetMeNot(steps=8, lr=1e-2, images=4, batch_size=4, ddim_steps=3)
    edited = eraser.erase(tiny, "star")
    assert eraser.history[-1] < eraser.history[0]
    changed = {n for n, p in edited.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("attn2" in n for n in changed)
    assert all(torch.equal(p, before[n]) for n, p in tiny.unet.named_parameters())  # the input model is untouched
