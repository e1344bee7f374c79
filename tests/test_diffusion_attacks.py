"""UnlearnDiffAtk's mechanism: the soft prefix reaches the text encoder, the straight-through optimisation lowers
the denoising loss, and on a tiny vocabulary it finds a prefix as good as brute-force search."""

import itertools

import pytest
import torch

from obliviate.diffusion.attacks.unlearndiffatk import UnlearnDiffAtk, denoising_loss, prefixed, soft_prefix
from obliviate.diffusion.model import T2IConfig, build_t2i, build_word_tokenizer

CAPTIONS = ["a striped red star", "a dotted blue circle", "a solid green square"]


@pytest.fixture(scope="module")
def tiny():
    tok = build_word_tokenizer(CAPTIONS, max_length=8)
    return build_t2i(tok, T2IConfig(size=8, channels=(16, 32), text_dim=32, text_layers=1, text_heads=2,
                                    max_length=8), seed=0)


def test_a_one_hot_prefix_equals_the_real_tokens(tiny):
    tok = tiny.tokenizer
    red = tok.convert_tokens_to_ids("red")
    w = torch.nn.functional.one_hot(torch.tensor([red]), len(tok)).float()
    with soft_prefix(tiny, w):
        soft = tiny.encode([prefixed(tok, "star", 1)])
    assert torch.allclose(soft, tiny.encode(["red star"]), atol=1e-6)


def test_optimised_prefix_matches_brute_force_on_a_tiny_vocabulary(tiny):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 1000, (8,), generator=g)
    noise = torch.randn(8, 3, 8, 8, generator=g)
    x = images[torch.arange(8) % 2]
    V = len(tiny.tokenizer)
    special = set(tiny.tokenizer.all_special_ids)

    def loss_of(ids):
        w = torch.nn.functional.one_hot(torch.tensor(ids), V).float()
        with torch.no_grad():
            return float(denoising_loss(tiny, "star", w, x, t, noise))

    brute = {ids: loss_of(list(ids)) for ids in itertools.product([i for i in range(V) if i not in special], repeat=1)}
    best = min(brute.values())
    # the same deterministic objective for the optimiser as for brute force
    atk = UnlearnDiffAtk(prefix_tokens=1, steps=20, lr=0.5, seed=0)
    res = atk.attack(tiny, "star", images, fixed=(torch.arange(8) % 2, t, noise))
    found = loss_of(res["prefix_ids"])
    worst = max(brute.values())
    assert found <= best + 0.25 * (worst - best), (found, best, worst)
    assert res["history"][-1] <= res["history"][0]
    assert res["prompt"].endswith("star") and len(res["history"]) == 20


def test_unlearndiffatk_judges_its_prefix_during_the_attack_and_stops_at_a_success(tiny):
    """The reference code's loop: the projected prefix is judged every `eval_every` steps and the first accepted
    one ends the attack; attacked_images returns that prompt's generation, sampled once."""
    from obliviate.diffusion.evaluate import SampleConfig

    images = torch.rand(2, 3, 8, 8) * 2 - 1
    calls = []

    def third(text):
        calls.append(text)
        return len(calls) == 3

    res = UnlearnDiffAtk(prefix_tokens=1, steps=20, eval_every=2, samples=2).attack(tiny, "star", images, check=third)
    assert res["stopped_at"] == 6 and len(res["history"]) == 6 and res["prompt"] == calls[-1]
    res = UnlearnDiffAtk(prefix_tokens=1, steps=4, eval_every=0, samples=2).attack(tiny, "star", images, check=third)
    assert res["stopped_at"] is None and len(res["history"]) == 4 and len(calls) == 3
    cfg, judged = SampleConfig(steps=2), []

    def judge(ims):
        judged.append(ims)
        return [True]

    got = UnlearnDiffAtk(prefix_tokens=1, steps=20, samples=2).attacked_images(tiny, tiny, "star", images, cfg, judge)
    assert len(judged) == 1 and torch.equal(got, judged[0])  # accepted at step 1; its images are the answer


def test_unlearndiffatk_sweeps_the_reference_timesteps_low_to_high(tiny, monkeypatch):
    import obliviate.diffusion.attacks.unlearndiffatk as uda
    from obliviate.core.errors import UsageError

    seen, real = [], uda.denoising_loss

    def spy(model, prompt, w, x, t, noise):
        seen.append(t.tolist())
        return real(model, prompt, w, x, t, noise)

    monkeypatch.setattr(uda, "denoising_loss", spy)
    UnlearnDiffAtk(prefix_tokens=1, steps=4).attack(tiny, "star", torch.rand(2, 3, 8, 8) * 2 - 1)
    assert seen == [[125], [375], [625], [875]]  # the reference's sampled_t for n=4 of T=1000, one noise draw each
    with pytest.raises(UsageError, match="timesteps"):
        UnlearnDiffAtk(timesteps="backwards")


def test_p4d_projects_to_real_tokens_and_lowers_its_loss(tiny):
    from obliviate.diffusion.attacks.p4d import P4D, nearest_tokens

    table = tiny.text_encoder.get_input_embeddings().weight.detach()
    allowed = torch.ones(table.shape[0], dtype=torch.bool)
    assert nearest_tokens(table[[3, 5]] * 2.0, table, allowed).tolist() == [3, 5]  # cosine: scale-free
    erased = tiny.copy()
    with torch.no_grad():
        for p in erased.unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    res = P4D(prompt_tokens=2, steps=6, samples=2).attack(erased, tiny, "star", images)
    assert len(res["prompt_ids"]) == 2 and res["prompt"].endswith("star")
    assert all(i not in tiny.tokenizer.all_special_ids for i in res["prompt_ids"])


def test_embedding_shift_stays_in_its_ball(tiny):
    from obliviate.diffusion.attacks.embedding_shift import EmbeddingShift

    images = torch.rand(2, 3, 8, 8) * 2 - 1
    res = EmbeddingShift(steps=5, lr=0.5, radius=0.1, samples=2).attack(tiny, "star", images)
    assert res["delta_norm"] <= res["bound"] + 1e-5 and res["delta_norm"] > 0
    assert tiny.sample(["star"], steps=2, context=res["context"]).shape == (1, 3, 8, 8)


def test_concept_arithmetic_with_one_term_is_ordinary_guidance(tiny):
    from obliviate.diffusion.attacks.concept_arithmetic import composed_sample

    a = composed_sample(tiny, [("red star", 2.0)], 3, steps=3, seed=1)
    b = tiny.sample(["red star"] * 3, steps=3, guidance=2.0, seed=1)
    assert torch.allclose(a, b, atol=1e-5)


def test_concept_arithmetic_adds_directions_and_keeps_the_best(tiny):
    from obliviate.diffusion.attacks.concept_arithmetic import ConceptArithmetic, composed_sample, compositions

    # "red star" - "red" + "red" = "red star": the arithmetic is linear in the weights
    a = composed_sample(tiny, [("red star", 2.0), ("red", -1.0), ("red", 1.0)], 2, steps=3, seed=0)
    b = composed_sample(tiny, [("red star", 2.0)], 2, steps=3, seed=0)
    assert torch.allclose(a, b, atol=1e-5)
    cands = compositions("star", ["red"], 2.0)
    assert cands[0] == [("star", -1.0)] and cands[-1] == [("red star", 2.0), ("red", -2.0)]
    # a recogniser that accepts bright images: the attack reports the composition it liked best
    res = ConceptArithmetic(samples=2, budget=4, steps=2).attack(tiny, "star", lambda x: (x.mean((1, 2, 3)) > 0).tolist(),
                                                                 ["red"])
    assert len(res["tried"]) == 4 and res["success_rate"] == max(r["success"] for r in res["tried"])
