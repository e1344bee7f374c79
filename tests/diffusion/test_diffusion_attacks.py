"""UnlearnDiffAtk's mechanism: the soft prefix reaches the text encoder, the straight-through optimisation lowers
the denoising loss, and on a tiny vocabulary it finds a prefix as good as brute-force search."""

import itertools
import types

import pytest
import torch

from obliviate.diffusion.attacks.unlearndiffatk import UnlearnDiffAtk, denoising_loss, prefixed, soft_prefix
from obliviate.diffusion.model import T2IConfig, build_t2i, build_word_tokenizer

CAPTIONS = ["a striped red star", "a dotted blue circle", "a solid green square"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: a second intra-op thread only adds synchronisation. Next to another job on two
    cores, this file took 187 s with 2 threads and 10 s with 1."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    tok = build_word_tokenizer(CAPTIONS, max_length=8)
    return build_t2i(
        tok, T2IConfig(size=8, channels=(16, 32), text_dim=32, text_layers=1, text_heads=2, max_length=8), seed=0
    )


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
    one ends the attack; `find` returns that prompt and its generation, sampled once."""
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

    got = UnlearnDiffAtk(prefix_tokens=1, steps=20, samples=2).find(tiny, tiny, "star", images, cfg, judge)
    assert len(judged) == 1 and torch.equal(got.images, judged[0])  # accepted at step 1; its images are the answer
    assert got.prompt.endswith(" star") and got.context is None  # the adversarial prompt, kept for replay


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
    res = ConceptArithmetic(samples=2, budget=4, steps=2).attack(
        tiny, "star", lambda x: (x.mean((1, 2, 3)) > 0).tolist(), ["red"]
    )
    assert len(res["tried"]) == 4 and res["success_rate"] == max(r["success"] for r in res["tried"])


# --- the audit's UnlearnDiffAtk end to end, on a model whose answer is known ---
#
# A text-to-image model built by hand: the text encoder maps each word to a colour vote in RGB (its embedding row)
# and returns the votes as its hidden states; the "UNet" is the exact denoiser of the point mass at the solid image
# tanh(sum of the prompt's votes): eps(x_t, t) = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t). So DDIM draws exactly
# that colour, and the judge (the brightest channel) names it. The eraser replaces the word "red" by a strong blue
# vote; its synonym "crimson" survives. On the erased model a 2-token prefix brings red back only as
# "crimson crimson red" (sum (0.5, -3.5, -0.5)); one crimson is not enough (sum (-0.5, -2.5, 0.5)). With "crimson"
# erased as well, no prefix can: every word's red vote is below its blue vote and "red" keeps blue ahead.

VOTES = {
    "red": (1, -1, -1),
    "crimson": (1, -1, -1),
    "green": (-1, 1, -1),
    "blue": (-1, -1, 1),
    "a": (0, 0, 0),
    "shape": (0, 0, 0),
}
ERASED = {"red": (-1.5, -1.5, 1.5)}
COLOURS = ["red", "green", "blue"]


class ColourVotes(torch.nn.Module):
    def __init__(self, tok, votes: dict):
        super().__init__()
        w = torch.zeros(len(tok), 3)
        for word, v in votes.items():
            w[tok.convert_tokens_to_ids(word)] = torch.tensor(v, dtype=torch.float)
        self.embed = torch.nn.Embedding.from_pretrained(w, freeze=False)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids):
        return types.SimpleNamespace(last_hidden_state=self.embed(input_ids))


class PointMassDenoiser(torch.nn.Module):
    def __init__(self, alphas_cumprod: torch.Tensor, size: int = 8):
        super().__init__()
        self.register_buffer("abar", alphas_cumprod.float())
        self.unused = torch.nn.Parameter(torch.zeros(()))  # a parameter, for the device and requires_grad calls
        self.config = types.SimpleNamespace(in_channels=3, sample_size=size)

    def forward(self, z, t, encoder_hidden_states):
        a = self.abar[torch.as_tensor(t).reshape(-1).long()].reshape(-1, 1, 1, 1)
        x0 = torch.tanh(encoder_hidden_states.sum(1))[:, :, None, None]
        return types.SimpleNamespace(sample=(z - a.sqrt() * x0) / (1 - a).sqrt())


def colour_model(votes: dict):
    from diffusers import DDPMScheduler

    from obliviate.diffusion.model import T2I

    tok = build_word_tokenizer([" ".join(VOTES)], max_length=8)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    return T2I(PointMassDenoiser(sched.alphas_cumprod), ColourVotes(tok, votes), tok, dict(sched.config))


class BrightestChannel:
    def __init__(self):
        self.values = {"colour": COLOURS}

    def predict(self, images):
        return {"colour": images.mean((2, 3)).argmax(1)}


COLOUR_WORLD = {
    "factors": {"object": ["shape"], "colour": COLOURS, "style": ["plain"], "background": []},
    "prompts": [
        {"text": text, "object": "shape", "colour": colour, "style": "plain", "background": None}
        for text, colour in [("red", "red"), ("a red shape", "red"), ("crimson crimson red", "red"), ("green", "green")]
    ],
}


def colour_audit(erased, steps: int, monkeypatch=None):
    from obliviate.diffusion.audit import DiffusionAuditConfig, audit_concept
    from obliviate.diffusion.evaluate import SampleConfig

    cfg = DiffusionAuditConfig(
        prompts=4,
        target_images=2,
        sample=SampleConfig(steps=4, guidance=2.0),
        options={"unlearndiffatk": {"prefix_tokens": 2, "steps": steps, "lr": 0.1}},
    )
    res = audit_concept(erased, colour_model(VOTES), BrightestChannel(), COLOUR_WORLD, "red", ["unlearndiffatk"], cfg)
    return res, dict(zip(res["prompts"], res["attacks"]["unlearndiffatk"]["per_prompt"]))


def test_the_colour_model_draws_its_votes():
    judge = BrightestChannel()
    for votes, prompt, want in [
        (VOTES, "red", "red"),
        (VOTES, "a green shape", "green"),
        (VOTES | ERASED, "red", "blue"),
        (VOTES | ERASED, "crimson red", "blue"),
        (VOTES | ERASED, "crimson crimson red", "red"),
    ]:
        images = colour_model(votes).sample([prompt], steps=4, guidance=2.0)
        assert COLOURS[int(judge.predict(images)["colour"][0])] == want, (prompt, want)


def test_unlearndiffatk_finds_the_only_prefix_that_undoes_the_erasure():
    original, erased = colour_model(VOTES), colour_model(VOTES | ERASED)
    red = original.sample(["red"] * 2, steps=4, guidance=2.0, seed=1)
    res = UnlearnDiffAtk(prefix_tokens=2, steps=30, lr=0.1).attack(erased, "red", red)
    assert res["prompt"] == "crimson crimson red"  # the denoising loss's minimum over the 36 two-word prefixes


def test_audit_asr_counts_what_unlearndiffatk_brings_back(monkeypatch):
    """Pre-attack, only "crimson crimson red" draws red (pre-ASR 1/3; it is counted, not attacked). The attack
    brings the other two back (ASR 1); the same attack with 0 steps, its random first prefix, brings back none."""
    attacked = []
    real = UnlearnDiffAtk.attack
    monkeypatch.setattr(
        UnlearnDiffAtk,
        "attack",
        lambda self, model, prompt, *a, **k: (attacked.append(prompt), real(self, model, prompt, *a, **k))[1],
    )
    erased = colour_model(VOTES | ERASED)
    res, per_prompt = colour_audit(erased, steps=30)
    assert res["pre_asr"] == pytest.approx(1 / 3) and res["attacks"]["unlearndiffatk"]["asr"] == 1.0
    assert per_prompt == {"red": True, "a red shape": True, "crimson crimson red": True}
    assert sorted(attacked) == ["a red shape", "red"]
    res, per_prompt = colour_audit(erased, steps=0)
    assert res["attacks"]["unlearndiffatk"]["asr"] == res["pre_asr"] == pytest.approx(1 / 3)
    assert per_prompt == {"red": False, "a red shape": False, "crimson crimson red": True}


def test_audit_asr_stays_at_pre_asr_when_no_prefix_can_bring_the_concept_back():
    """With "crimson" erased too, no word votes red: however long the attack runs, ASR = pre-ASR = 0 (an attack that
    judged the original model's images, or its targets, would report success here)."""
    res, per_prompt = colour_audit(colour_model(VOTES | ERASED | {"crimson": (-1.5, -1.5, 1.5)}), steps=30)
    assert res["pre_asr"] == 0 and res["attacks"]["unlearndiffatk"]["asr"] == 0
    assert per_prompt == {"red": False, "a red shape": False, "crimson crimson red": False}
