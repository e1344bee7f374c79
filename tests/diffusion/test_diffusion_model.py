"""The tiny text-to-image model (diffusers layout) and UCE's closed form (Gandikota et al. 2024) by hand."""

import numpy as np
import pytest
import torch

from obliviate.core.errors import UsageError
from obliviate.diffusion.erasers import ERASERS, cross_attention_kv, load_all
from obliviate.diffusion.erasers.uce import aligned_keys, uce_edit
from obliviate.diffusion.model import (
    T2IConfig,
    build_t2i,
    build_word_tokenizer,
    ema_decay,
    load_t2i,
    lr_factor,
    train_t2i,
    unknown_words,
)

CAPTIONS = ["a striped red star", "a dotted blue circle", "a solid green square", "a red star in dotted style"]


@pytest.fixture(scope="module")
def tiny():
    tok = build_word_tokenizer(CAPTIONS, max_length=8)
    return build_t2i(
        tok, T2IConfig(size=8, channels=(16, 32), text_dim=32, text_layers=1, text_heads=2, max_length=8), seed=0
    )


def test_word_tokenizer_layout(tiny):
    tok = tiny.tokenizer
    enc = tiny.tokens(["red star", ""])
    ids, mask = enc["input_ids"].tolist(), enc["attention_mask"].tolist()
    bos, eos = tok.bos_token_id, tok.eos_token_id
    star, red = tok.convert_tokens_to_ids("star"), tok.convert_tokens_to_ids("red")
    assert ids[0] == [bos, red, star, eos, eos, eos, eos, eos] and mask[0] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert ids[1] == [bos, eos] + [eos] * 6 and mask[1] == [1, 1, 0, 0, 0, 0, 0, 0]
    assert unknown_words(tok, "a purple star") == ["purple"] and unknown_words(tok, "Red STAR") == []


def test_save_load_roundtrip_and_missing_parts(tiny, tmp_path):
    tiny.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {
        "model_index.json",
        "unet",
        "text_encoder",
        "tokenizer",
        "scheduler",
    }
    m2 = load_t2i(tmp_path / "m")
    z = torch.randn(2, 3, 8, 8)
    ctx = tiny.encode(["a red star", "a blue circle"])
    assert torch.allclose(m2.encode(["a red star", "a blue circle"]), ctx, atol=1e-6)
    assert torch.allclose(m2.eps(z, 10, ctx), tiny.eps(z, 10, ctx), atol=1e-5)
    (tmp_path / "bad").mkdir()
    with pytest.raises(UsageError, match="no unet/"):
        load_t2i(tmp_path / "bad")


def test_ema_decay_warms_up_like_diffusers():
    # (1 + t) / (10 + t): 0.1 at the first step, 0.5 at t = 8, 0.9 at t = 80, then capped
    assert ema_decay(0, 0.999) == pytest.approx(0.1)
    assert ema_decay(8, 0.999) == pytest.approx(0.5)
    assert ema_decay(80, 0.999) == pytest.approx(0.9)
    assert ema_decay(10**6, 0.999) == 0.999


def test_the_learning_rate_warms_up_holds_then_cools_down_linearly():
    # 1,000 steps, warm-up 50, the last 40% (steps 600-999) decaying linearly to zero
    assert lr_factor(0, 1000) == pytest.approx(1 / 50)
    assert lr_factor(49, 1000) == 1.0 and lr_factor(999, 1000) == 1.0  # no cooldown: constant after the warm-up
    assert lr_factor(599, 1000, 0.4) == 1.0
    assert lr_factor(600, 1000, 0.4) == pytest.approx(1.0)  # (1000 - 600) / 400
    assert lr_factor(800, 1000, 0.4) == pytest.approx(0.5)
    assert lr_factor(999, 1000, 0.4) == pytest.approx(1 / 400)
    assert lr_factor(10, 1000, 1.0) == pytest.approx(11 / 50 * 990 / 1000)  # warm-up and decay together
    with pytest.raises(UsageError, match="cooldown"):
        lr_factor(0, 10, 1.5)


def test_a_few_training_steps_and_sampling(tiny):
    m = tiny.copy()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    stats = train_t2i(m, images, [[c] for c in (CAPTIONS + CAPTIONS)[:6]], steps=3, batch_size=4)
    assert np.isfinite(stats["loss_last"]) and stats["seconds"] > 0 and stats["steps"] == 3
    # a frozen text encoder does not move
    te = {k: v.clone() for k, v in m.text_encoder.state_dict().items()}
    short = train_t2i(
        m, images, [[c] for c in (CAPTIONS + CAPTIONS)[:6]], steps=2, batch_size=4, train_text_encoder=False
    )
    assert short["steps"] == 2
    assert all(torch.equal(v, m.text_encoder.state_dict()[k]) for k, v in te.items())
    assert all(p.requires_grad for p in m.text_encoder.parameters())  # restored for erasers that train it
    # the cooldown reaches the optimiser: the same 3 steps with the rate decaying to zero end elsewhere
    held, cooled = tiny.copy(), tiny.copy()
    caps = [[c] for c in (CAPTIONS + CAPTIONS)[:6]]
    train_t2i(held, images, caps, steps=3, batch_size=4, ema=0.0)
    train_t2i(cooled, images, caps, steps=3, batch_size=4, ema=0.0, cooldown=1.0)
    assert not all(torch.equal(a, b) for a, b in zip(held.unet.parameters(), cooled.unet.parameters()))
    out = m.sample(["a red star", "a blue circle"], steps=3, guidance=2.0, seed=1)
    assert out.shape == (2, 3, 8, 8) and out.min() >= -1 and out.max() <= 1
    again = m.sample(["a red star", "a blue circle"], steps=3, guidance=2.0, seed=1)
    assert torch.equal(out, again)  # seeded per image


def test_uce_closed_form_maps_the_concept_onto_the_guide():
    torch.manual_seed(0)
    d, out, n = 6, 5, 3
    W = torch.randn(out, d, dtype=torch.float64)
    c_e, c_g = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    new = uce_edit(W, [(c_e, c_g)], [], lam=1e-9)
    assert torch.allclose(new @ c_e.T, W @ c_g.T, atol=1e-5)
    # a direction orthogonal to every key stays where it was (the lam W term)
    q, _ = torch.linalg.qr(torch.cat([c_e.T, torch.randn(d, d - n, dtype=torch.float64)], 1))
    ortho = q[:, n:]
    assert torch.allclose(new @ ortho, W @ ortho, atol=1e-6)
    # preserve terms keep a preserved key's output (closer than without them)
    c_p = torch.randn(2, d, dtype=torch.float64)
    kept = uce_edit(W, [(c_e, c_g)], [c_p], lam=0.1, preserve_scale=10.0)
    free = uce_edit(W, [(c_e, c_g)], [], lam=0.1)
    assert (kept @ c_p.T - W @ c_p.T).norm() < (free @ c_p.T - W @ c_p.T).norm()


def test_uce_on_the_model_edits_every_cross_attention_kv(tiny):
    load_all()
    edited = ERASERS.get("uce")(lam=1e-9, preserve_scale=0.0).erase(tiny, "star", guide="")
    c_e, c_g = aligned_keys(tiny, "star", "")
    assert c_e.shape == c_g.shape and c_e.shape[0] == 8 - 1  # from the last word (index 1) to the end
    for old, new in zip(cross_attention_kv(tiny.unet), cross_attention_kv(edited.unet)):
        assert torch.allclose(new.weight.double() @ c_e.T, old.weight.double() @ c_g.T, atol=1e-4)
    assert len(cross_attention_kv(tiny.unet)) >= 2
    # the input model is untouched
    assert not torch.equal(cross_attention_kv(tiny.unet)[0].weight, cross_attention_kv(edited.unet)[0].weight)


def test_a_latent_model_with_a_vae(tiny, tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from obliviate.diffusion.model import T2I

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=8,
    ).eval()
    unet = UNet2DConditionModel(
        sample_size=4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    m = T2I(unet, tiny.text_encoder, tiny.tokenizer, tiny.scheduler_config, vae)
    m.save(tmp_path / "sd")
    m2 = load_t2i(tmp_path / "sd")
    assert m2.vae is not None
    images = m2.sample(["a red star"], steps=2)
    assert images.shape == (1, 3, 8, 8)
    load_all()
    edited = ERASERS.get("uce")().erase(m2, "star")
    assert edited.sample(["a red star"], steps=2).shape == (1, 3, 8, 8)


def test_esd_target_by_hand():
    from obliviate.diffusion.erasers.esd import esd_target

    e_u, e_c = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 1.0])
    # e_u - eta (e_c - e_u) with eta = 0.5: [1 - 0.5 * 2, 2 - 0.5 * -1]
    assert esd_target(e_u, e_c, 0.5).tolist() == [0.0, 2.5]


@pytest.mark.parametrize("name,cross", [("esd_x", True), ("esd_u", False)])
def test_esd_trains_only_its_parameters(tiny, name, cross):
    from obliviate.diffusion.erasers.esd import trainable

    load_all()
    er = ERASERS.get(name)(steps=2, batch_size=2, ddim_steps=3)
    edited = er.erase(tiny, "star")
    moved = {
        n
        for (n, a), (_, b) in zip(tiny.unet.named_parameters(), edited.unet.named_parameters())
        if not torch.equal(a, b)
    }
    assert moved and all(("attn2" in n) == cross for n in moved)
    assert {id(p) for p in trainable(tiny.unet, cross)} and len(er.history) == 2
    # the text encoder is never trained by ESD
    assert all(torch.equal(a, b) for a, b in zip(tiny.text_encoder.parameters(), edited.text_encoder.parameters()))


def test_erase_command(tiny, tmp_path, capsys):
    from tests.cli.test_cli import run_cli

    tiny.save(tmp_path / "m")
    code, out, err = run_cli(
        [
            "erase",
            "uce",
            "--model",
            tmp_path / "m",
            "--concept",
            "star",
            "--preserve",
            "circle",
            "--out",
            tmp_path / "e",
        ],
        capsys,
    )
    assert code == 0, err
    edited = load_t2i(tmp_path / "e")
    assert not torch.equal(cross_attention_kv(edited.unet)[0].weight, cross_attention_kv(tiny.unet)[0].weight)
    code, out, err = run_cli(
        ["erase", "uce", "--model", tmp_path / "m", "--concept", "purple star", "--out", tmp_path / "e2"], capsys
    )
    assert code == 2 and "does not know 'purple'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e2").exists()


def test_rece_adversarial_embedding_closed_form():
    from obliviate.diffusion.erasers.rece import adversarial_embedding

    torch.manual_seed(0)
    d = 4
    Wn, Wo = [torch.randn(d, d, dtype=torch.float64)], [torch.randn(d, d, dtype=torch.float64)]
    c = torch.randn(3, d, dtype=torch.float64)
    adv = adversarial_embedding(Wn, Wo, c, reg=1e-12)
    # one square invertible projection and no regulariser: W_new c' = W_old c exactly
    assert torch.allclose(adv @ Wn[0].T, c @ Wo[0].T, atol=1e-6)


def test_rece_erases_the_embedding_that_regenerates_the_concept(tiny):
    from obliviate.diffusion.erasers.rece import adversarial_embedding

    load_all()
    uce = ERASERS.get("uce")().erase(tiny, "star")
    rece = ERASERS.get("rece")(epochs=1)
    edited = rece.erase(tiny, "star")
    c_e, _ = aligned_keys(tiny, "star", "")
    old = [p.weight.detach().double() for p in cross_attention_kv(tiny.unet)]

    def regenerated(model):  # how far the UCE-era adversarial embedding still lands from the concept's outputs
        return sum(
            ((adv0 @ p.weight.detach().double().T) - (c_e @ o.T)).norm()
            for p, o in zip(cross_attention_kv(model.unet), old)
        )

    adv0 = adversarial_embedding(
        [p.weight.detach() for p in cross_attention_kv(uce.unet)],
        [p.weight.detach() for p in cross_attention_kv(tiny.unet)],
        c_e,
        1e-3,
    )
    assert torch.allclose(adv0, rece.adversarial[0], atol=1e-6)
    assert regenerated(edited) > 2 * regenerated(uce)


def test_advunlearn_trains_the_text_encoder_only(tiny):
    load_all()
    er = ERASERS.get("advunlearn")(steps=2, batch_size=2, ddim_steps=3, attack_steps=1, lr=1e-3)
    edited = er.erase(tiny, "star", preserve=("circle",))
    assert len(er.history) == 2 and all(np.isfinite(er.history))
    assert all(torch.equal(a, b) for a, b in zip(tiny.unet.parameters(), edited.unet.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(tiny.text_encoder.parameters(), edited.text_encoder.parameters()))


def test_advunlearn_follows_its_reference_loop(tiny, monkeypatch):
    """The reference's text_encoder_full (every encoder layer and the final norm, no embeddings), its warm-up
    without the attack, and its inner attack's quirks: the embedding returned is the one the last step scored."""
    from obliviate.diffusion.erasers.advunlearn import AdvUnlearn, text_encoder_layers

    names = {id(p): n for n, p in tiny.text_encoder.named_parameters()}
    enc = [names[id(p)] for p in text_encoder_layers(tiny.text_encoder, "encoder")]
    assert enc and not any("embeddings" in n for n in enc) and any("final_layer_norm" in n for n in enc)
    assert len(text_encoder_layers(tiny.text_encoder, "all")) == len(names)
    calls = []
    real = AdvUnlearn.attack

    def spy(self, *a):
        calls.append(a[-1])
        return real(self, *a)

    monkeypatch.setattr(AdvUnlearn, "attack", spy)
    er = AdvUnlearn(steps=3, warmup=2, batch_size=1, ddim_steps=3, attack_steps=1, retain_batch=2)
    edited = er.erase(tiny, "star", preserve=("a dotted blue circle",))
    assert len(calls) == 1 and len(er.history) == 3  # the attack runs after the warm-up only
    emb_before = tiny.text_encoder.get_input_embeddings().weight
    assert torch.equal(edited.text_encoder.get_input_embeddings().weight, emb_before)
    g = torch.Generator().manual_seed(0)
    u, c = tiny.encode([""]), tiny.encode(["star"])
    init = emb_before[:1].detach()
    one = AdvUnlearn(batch_size=1, ddim_steps=3, attack_steps=1).attack(tiny, tiny, "a star", c, u, g, init)
    assert torch.equal(one, init)  # one step: scored before its update, which is not used
    two = AdvUnlearn(batch_size=1, ddim_steps=3, attack_steps=2, attack_lr=0.1, attack_method="fast_at")
    moved = two.attack(tiny, tiny, "a star", c, u, g, init)
    assert torch.allclose((moved - init).abs(), torch.full_like(init, 0.1), atol=1e-5)  # Adam's first step: lr


def test_concept_ablation_trains_kv_and_needs_an_anchor(tiny):
    load_all()
    er = ERASERS.get("concept_ablation")(steps=2, anchor_images=2, batch_size=2, ddim_steps=2)
    edited = er.erase(tiny, "star", guide="circle")
    moved = {
        n
        for (n, a), (_, b) in zip(tiny.unet.named_parameters(), edited.unet.named_parameters())
        if not torch.equal(a, b)
    }
    assert moved and all("attn2.to_k" in n or "attn2.to_v" in n for n in moved)
    with pytest.raises(UsageError, match="anchor"):
        er.erase(tiny, "star")


def test_salun_mask_keeps_the_top_share_and_only_masked_weights_move(tiny):
    load_all()
    er = ERASERS.get("salun")(steps=2, images=2, batch_size=2, ddim_steps=2, saliency_share=0.1, saliency_batches=1)
    edited = er.erase(tiny, "star", preserve=("circle",))
    n_all = sum(m.numel() for m in er.mask.values())
    n_kept = sum(int(m.sum()) for m in er.mask.values())
    assert abs(n_kept / n_all - 0.1) < 0.02
    for (n, a), (_, b) in zip(tiny.unet.named_parameters(), edited.unet.named_parameters()):
        assert torch.equal(a[~er.mask[n]], b[~er.mask[n]])  # unmasked weights never move
    assert any(not torch.equal(a, b) for a, b in zip(tiny.unet.parameters(), edited.unet.parameters()))


def test_spm_needs_three_ddim_steps():
    """SPM stops each DDIM walk at a step drawn from [1, ddim_steps - 1): 2 steps leave nothing to draw."""
    from obliviate.diffusion.erasers import ERASERS, load_all

    load_all()
    with pytest.raises(UsageError, match="ddim_steps >= 3"):
        ERASERS.get("spm")(ddim_steps=2)
    ERASERS.get("spm")(ddim_steps=3)
