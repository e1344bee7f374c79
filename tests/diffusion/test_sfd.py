"""Score Forgetting Distillation (Chen et al. 2025): SiD's generator loss by hand, the one-step generator it
returns (sampled in one UNet pass, saved and loaded as such), and the data-free claim: no world image is read."""

import pytest
import torch

from obliviate.diffusion.erasers import ERASERS, load_all
from obliviate.diffusion.erasers.sfd import SFD, sid_generator_loss
from obliviate.diffusion.model import T2IConfig, build_t2i, build_word_tokenizer, load_t2i

CAPTIONS = ["a striped red star", "a dotted blue circle", "a solid green cross", "a red cross in dotted style"]


@pytest.fixture(scope="module")
def tiny():
    tok = build_word_tokenizer(CAPTIONS, max_length=8)
    return build_t2i(
        tok, T2IConfig(size=8, channels=(16, 32), text_dim=32, text_layers=1, text_heads=2, max_length=8), seed=0
    )


def test_sid_generator_loss_by_hand():
    p = torch.tensor([[[[1.0, 3.0]]]])  # [1, 1, 1, 2]
    f = torch.tensor([[[[0.5, 1.0]]]])
    x0 = torch.tensor([[[[0.0, 1.0]]]])
    # omega = mean |p - x0| = (1 + 2) / 2 = 1.5; sum (p - f)((p - x0) - 1.2 (p - f)) = 0.5 (1 - 0.6) + 2 (2 - 2.4)
    assert float(sid_generator_loss(p, f, x0, 1.2)) == pytest.approx((0.2 - 0.8) / 1.5)
    # alpha = 1: (p - f) . (f - x0) / omega
    assert float(sid_generator_loss(p, f, x0, 1.0)) == pytest.approx((0.5 * 0.5 + 2.0 * 0.0) / 1.5)


def test_sfd_prompts_swap_the_guide_for_the_concept():
    forget, over, remain = SFD().prompts("star", "cross", ["a solid green cross", "a dotted blue circle", "a red star"])
    assert forget == ["a solid green star"] and over == ["a solid green cross"] and remain == ["a dotted blue circle"]


def test_sfd_returns_a_one_step_generator(tiny, tmp_path, monkeypatch):
    load_all()
    assert ERASERS.get("sfd") is SFD
    er = SFD(steps=2, batch_size=2)
    gen = er.erase(tiny, "star", guide="cross", preserve=tuple(CAPTIONS))
    assert gen.one_step_t == 440 and tiny.one_step_t is None and len(er.history) == 2
    assert any(not torch.equal(a, b) for a, b in zip(tiny.unet.parameters(), gen.unet.parameters()))
    calls = []
    real = type(gen.unet).forward

    def count(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(type(gen.unet), "forward", count)
    images = gen.sample(["a red star", "a blue circle"], steps=20, guidance=3.0)
    assert images.shape == (2, 3, 8, 8) and len(calls) == 1  # one UNet pass for the batch, not 20 x 2
    monkeypatch.undo()
    gen.save(tmp_path / "g")
    again = load_t2i(tmp_path / "g")
    assert again.one_step_t == 440 and torch.equal(
        again.sample(["a red star"], seed=1), gen.sample(["a red star"], seed=1)
    )
    with pytest.raises(Exception, match="guide"):
        SFD(steps=1).erase(tiny, "star")


def test_sfd_reads_no_world_image(tmp_path, monkeypatch):
    """The demo's path (`demo_erase`) with a world whose images raise when touched, and every image reader and
    renderer of the image world replaced by one that fails: SFD runs on prompts (text) and the teacher's score."""
    import numpy as np

    import obliviate.diffusion.world as W
    from obliviate.demos.diffusion import demo_erase

    world = W.build_image_world(W.ImageWorldSpec(per_combination=2))
    tok = build_word_tokenizer(W.vocabulary(world))
    base = build_t2i(tok, T2IConfig(size=16, channels=(16, 32), text_dim=32, text_layers=1, text_heads=2), seed=0)

    class Untouchable:
        def __getitem__(self, k):
            raise AssertionError("a world image was read")

        def __len__(self):
            raise AssertionError("a world image was read")

    def fail(*a, **k):
        raise AssertionError("an image was rendered or loaded")

    world["images"] = Untouchable()
    for name in ("render", "sample_images", "build_image_world", "load_image_world"):
        monkeypatch.setattr(W, name, fail)
    monkeypatch.setattr(np, "load", fail)
    gen = demo_erase("sfd", base, world, "star", 2, options={"batch_size": 2})
    assert gen.one_step_t is not None
