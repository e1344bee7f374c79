"""The trained erasers (ESD, Concept Ablation, SalUn, SPM, AdvUnlearn) on a constructed two-concept case whose answer
is known.

The toy: the tests' tiny UNet (untrained, as in test_diffusion_model.py) reading a bag-of-words text encoder: every
word has its own orthogonal vector (norm 4 sqrt(d)), BOS, EOS and padding are zero. So "star" and "circle" are
independent concepts (a prompt's context holds its own words' vectors and zeros; the empty prompt's is all zero).
The tiny CLIP encoder at initialisation cannot serve here: it gives any two one-word prompts contexts with cosine ~0.8,
so no eraser could take one concept and leave the other.

A prompt's score for a concept is its classifier-free guidance direction g(p) = eps(x, p) - eps(x, "") in the edited
model, on fixed probe points, projected on the original model's direction for the concept: 1 for the original model
and its own concept, and -1 at ESD's target with eta = 1 (eps(x, c) -> eps(x, "") - (eps(x, c) - eps(x, ""))).
"""

import types

import pytest
import torch

from obliviate.diffusion.erasers.advunlearn import AdvUnlearn
from obliviate.diffusion.erasers.concept_ablation import ConceptAblation
from obliviate.diffusion.erasers.esd import ESDx
from obliviate.diffusion.erasers.salun import SalUn
from obliviate.diffusion.erasers.spm import SPM, attention_linears
from obliviate.diffusion.model import T2I, T2IConfig, build_t2i, build_word_tokenizer

WORDS = ["a striped red star", "a dotted blue circle"]


class BagOfWords(torch.nn.Module):
    """A text encoder whose last hidden state is the token embeddings themselves: orthogonal word vectors, zero
    special tokens, read through one linear layer that starts as the identity (the encoder's "layers", which
    AdvUnlearn trains: it leaves the token embeddings alone, as its reference code does)."""

    def __init__(self, tok, dim: int = 32, scale: float = 4.0, seed: int = 0):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(dim, len(tok), generator=torch.Generator().manual_seed(seed)))
        w = q.T * scale * dim**0.5
        w[list(tok.all_special_ids)] = 0
        self.embed = torch.nn.Embedding(len(tok), dim, _weight=w.contiguous())
        self.layer = torch.nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            self.layer.weight.copy_(torch.eye(dim))

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids):
        return types.SimpleNamespace(last_hidden_state=self.layer(self.embed(input_ids)))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A 250k-weight UNet on 8x8 images: a second intra-op thread only adds synchronisation, which costs 100x on a
    loaded CPU (a score took 7.6 s with 2 threads next to another job, 0.06 s with 1)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def toy():
    tok = build_word_tokenizer(WORDS, max_length=8)
    base = build_t2i(
        tok, T2IConfig(size=8, channels=(16, 32), text_dim=32, text_layers=1, text_heads=2, max_length=8), seed=0
    )
    return T2I(base.unet, BagOfWords(tok).eval(), tok, base.scheduler_config)


@pytest.fixture(scope="module")
def probes():
    """Points x_t where the ESD-style erasers read the model: noise at the DDIM timesteps of ddim_steps=3."""
    return torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(123)), torch.tensor([666, 333] * 4)


def eps(model, prompt: str, probes) -> torch.Tensor:
    z, t = probes
    with torch.no_grad():
        return model.eps(z, t, model.encode([prompt] * len(z))).flatten()


def direction(model, prompt: str, probes) -> torch.Tensor:
    return eps(model, prompt, probes) - eps(model, "", probes)


def score(edited, original, prompt: str, concept: str, probes) -> float:
    ref = direction(original, concept, probes)
    return float(direction(edited, prompt, probes) @ ref / (ref @ ref))


def unet_unchanged(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.unet.parameters(), b.unet.parameters()))


def test_the_toys_concepts_are_independent(toy, probes):
    assert score(toy, toy, "star", "star", probes) == pytest.approx(1.0)
    assert abs(score(toy, toy, "circle", "star", probes)) < 0.3  # circle's guidance is not star's


def test_esd_x_reverses_the_erased_concepts_guidance_and_keeps_the_other(toy, probes):
    edited = ESDx(steps=30, lr=1e-3, batch_size=2, ddim_steps=3).erase(toy, "star")
    assert score(edited, toy, "star", "star", probes) < 0.3  # from 1, towards ESD's -1
    assert score(edited, toy, "circle", "circle", probes) > 0.8
    assert score(edited, toy, "red", "red", probes) > 0.8


def test_concept_ablation_makes_the_target_prompt_predict_the_anchor(toy, probes):
    edited = ConceptAblation(steps=40, lr=3e-3, anchor_images=4, batch_size=4, ddim_steps=2).erase(
        toy, "star", guide="circle"
    )
    gap = (eps(toy, "star", probes) - eps(toy, "circle", probes)).norm()
    # measured: 0.42 and 0.16 of the gap
    assert (eps(edited, "star", probes) - eps(toy, "circle", probes)).norm() < 0.6 * gap
    assert (eps(edited, "circle", probes) - eps(toy, "circle", probes)).norm() < 0.25 * gap  # the anchor stays


def test_salun_relabelling_a_concept_with_itself_changes_nothing(toy):
    """Eq. 8 pulls the concept prompt's prediction on its images to another prompt's prediction on the same noisy
    images: with the concept itself as the other prompt (and no retain term) the loss is 0 and nothing moves."""
    er = SalUn(steps=3, images=2, batch_size=2, ddim_steps=2, saliency_batches=1, retain_weight=0.0)
    edited = er.erase(toy, "star", preserve=("star",))
    assert er.history == [0.0, 0.0, 0.0]
    assert unet_unchanged(toy, edited)
    moved = SalUn(steps=3, images=2, batch_size=2, ddim_steps=2, saliency_batches=1, retain_weight=0.0).erase(
        toy, "star", preserve=("circle",)
    )
    assert not unet_unchanged(toy, moved)


def test_salun_mask_is_the_top_share_of_the_gradient_by_hand(toy, monkeypatch):
    """With a forgetting loss sum(c * w) over the UNet weights w, |gradient| = |c| per batch: the mask keeps exactly
    the weights with the top 25% of |c|, here the ranks above 0.75 N of a permutation of 1..N."""
    params = dict(toy.unet.named_parameters())
    n = sum(p.numel() for p in params.values())
    ranks = torch.randperm(n, generator=torch.Generator().manual_seed(0)) + 1.0
    coeff, at = {}, 0
    for name, p in params.items():
        coeff[name] = (ranks[at : at + p.numel()] * (-1) ** at).reshape(p.shape)  # signs do not matter
        at += p.numel()
    monkeypatch.setattr(
        SalUn,
        "_loss",
        lambda self, model, x0, idx, ctx, g: sum((coeff[k] * p).sum() for k, p in model.unet.named_parameters()),
    )
    mask = SalUn(saliency_share=0.25, saliency_batches=2, batch_size=1).saliency_mask(
        toy, torch.zeros(1, 3, 8, 8), None, torch.Generator().manual_seed(0)
    )
    for name, m in mask.items():
        assert torch.equal(m, coeff[name].abs() > n - round(0.25 * n)), name
    toy.unet.zero_grad(set_to_none=True)


def test_spm_edits_each_attention_projection_by_rank_one(toy):
    before = {
        id(getattr(parent, attr) if attr != "0" else parent[0]): (
            getattr(parent, attr) if attr != "0" else parent[0]
        ).weight.clone()
        for parent, attr in attention_linears(toy.unet)
    }
    edited = SPM(steps=3, lr=1e-2, batch_size=2, anchors=2, ddim_steps=3).erase(toy, "star")
    names = {id(m): n for n, m in toy.unet.named_modules()}
    after = dict(edited.unet.named_modules())
    ranks = []
    for key, w in before.items():
        delta = (after[names[key]].weight - w).double()
        s = torch.linalg.svdvals(delta.detach())
        ranks.append(int((s > 1e-6 * max(float(s[0]), 1e-30)).sum()) if float(s[0]) > 0 else 0)
    assert max(ranks) == 1 and ranks.count(1) > len(ranks) // 2, ranks  # one dimension per layer, most layers moved


def test_spm_latent_anchoring_keeps_the_anchored_prompt(toy, probes):
    """SPM's anchoring term holds a preserved prompt to the original's prediction: with it, "circle" drifts much
    less than without it, while "star" is erased either way."""
    opts = {"steps": 20, "lr": 1e-2, "batch_size": 2, "ddim_steps": 3, "anchors": 2}
    anchored = SPM(la_strength=10.0, **opts).erase(toy, "star", preserve=("circle",))
    free = SPM(la_strength=0.0, **opts).erase(toy, "star", preserve=("circle",))
    for edited in (anchored, free):
        assert score(edited, toy, "star", "star", probes) < 0.3

    def drift(m):
        return float((eps(m, "circle", probes) - eps(toy, "circle", probes)).norm())

    assert drift(anchored) < 0.5 * drift(free)


def test_advunlearn_lowers_the_concepts_score_with_and_without_a_prefix(toy, probes):
    before = toy.text_encoder.embed.weight.clone()
    er = AdvUnlearn(
        steps=20, warmup=4, lr=0.05, batch_size=2, ddim_steps=3, attack_steps=2, attack_lr=0.05, retain_weight=1
    )
    edited = er.erase(toy, "star", preserve=("circle",))
    assert score(edited, toy, "star", "star", probes) < 0.3
    assert max(score(edited, toy, f"{w} star", "star", probes) for w in ("a", "red", "blue", "striped")) < 0.5
    assert score(edited, toy, "circle", "circle", probes) > 0.7
    # the reference's text_encoder_full: the encoder's layers train, the token embeddings do not
    assert torch.equal(edited.text_encoder.embed.weight, before)
    assert not torch.equal(edited.text_encoder.layer.weight, toy.text_encoder.layer.weight)
    assert unet_unchanged(toy, edited)
