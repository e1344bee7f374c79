"""Guardians of Generation (Roy et al. 2025) as a guard on the sampling loop: detection, the rewrite to the nearest
look-alike or a user mapping, the reference code's embedding mix and our away term, checked by hand; no weight
changes; `audit --guard gog` and `eval --guard gog`, and the guard spec's bad input."""

import hashlib
import json

import pytest
import torch

from obliviate.core.errors import UsageError
from obliviate.diffusion.guard import GoG, parse_guard
from obliviate.diffusion.model import T2IConfig, build_t2i, build_word_tokenizer
from tests.cli.test_cli import run_cli

CAPTIONS = ["a striped red star", "a dotted blue circle", "a solid green cross", "a red star in dotted style"]
WORLD = {"factors": {"object": ["star", "circle", "cross"], "look_alikes": {"object": {"star": ["cross", "circle"]}}}}
WORLD["factors"] |= {"colour": ["red", "blue", "green"], "style": ["striped", "dotted", "solid"], "background": []}


@pytest.fixture(scope="module")
def tiny():
    tok = build_word_tokenizer(CAPTIONS, max_length=8)
    return build_t2i(
        tok, T2IConfig(size=8, channels=(16, 32), text_dim=32, text_layers=1, text_heads=2, max_length=8), seed=0
    )


def digest(model) -> str:
    h = hashlib.sha256()
    for part in (model.unet, model.text_encoder):
        for k, v in sorted(part.state_dict().items()):
            h.update(k.encode() + v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def test_detect_and_rewrite_to_the_nearest_look_alike_or_a_mapping(tiny):
    g = GoG().guard(tiny, ["star"], WORLD)
    assert g.flagged("xx yy a striped red star") == "star" and g.flagged("a red cross") is None
    assert g.flagged("a starry sky") is None  # whole words, not substrings
    assert g.rewrite("qq a red star in dotted style") == "qq a red cross in dotted style"
    assert GoG(mapping={"star": "circle"}).guard(tiny, ["star"], WORLD).rewrite("a red star") == "a red circle"
    with pytest.raises(UsageError, match="no replacement"):
        GoG().guard(tiny, ["star"])


def test_the_embedding_mix_and_the_away_term_by_hand(tiny):
    before = digest(tiny)
    prompts = ["a striped red star", "a dotted blue circle"]
    # alpha = 1: a flagged prompt is encoded as its rewrite, exactly; an unflagged one as itself
    full = GoG(alpha=1.0).guard(tiny, ["star"], WORLD)
    assert torch.equal(full.encode(prompts)[0], tiny.encode(["a striped red cross"])[0])
    assert torch.equal(full.encode(prompts)[1], tiny.encode(prompts[1:])[0])
    got = full.sample(prompts, steps=3, seed=1)
    want = tiny.sample(["a striped red cross", "a dotted blue circle"], steps=3, seed=1)
    assert torch.equal(got, want)  # the unflagged prompt's image is the bare model's, bit for bit
    # alpha = 0.7: c_mix = 0.3 E(prompt) + 0.7 E(rewrite)
    half = GoG(alpha=0.7).guard(tiny, ["star"], WORLD)
    mix = 0.3 * tiny.encode(prompts[:1]) + 0.7 * tiny.encode(["a striped red cross"])
    assert torch.allclose(half.encode(prompts[:1]), mix, atol=1e-6)
    # away > 0: one DDIM step by hand, eps = e_u + w (e_mix - e_u) - away (e_prompt - e_u)
    away = GoG(alpha=0.7, away=1.5).guard(tiny, ["star"], WORLD)
    got = away.sample(prompts[:1], steps=1, guidance=2.0, seed=3)
    z = torch.randn(tiny.latent_shape(1), generator=torch.Generator().manual_seed(3 * 1_000_003))
    sched = tiny.ddim()
    sched.set_timesteps(1)
    t = sched.timesteps[0]
    e_u, e_c, e_f = (tiny.eps(z, t, c) for c in (tiny.encode([""]), mix, tiny.encode(prompts[:1])))
    want = tiny.to_pixels(sched.step(e_u + 2.0 * (e_c - e_u) - 1.5 * (e_f - e_u), t, z).prev_sample)
    assert torch.allclose(got, want, atol=1e-5)
    assert digest(tiny) == before  # no weight changed


def test_guard_spec_bad_input(tmp_path):
    assert parse_guard("gog").alpha == 0.7
    (tmp_path / "m.json").write_text(json.dumps({"star": "circle"}))
    assert parse_guard(f"gog:{tmp_path / 'm.json'}").mapping == {"star": "circle"}
    (tmp_path / "bad.json").write_text("[1, 2]")
    for spec, needle in [
        ("sld", "gog"),
        (f"gog:{tmp_path / 'bad.json'}", "concept -> replacement"),
        (f"gog:{tmp_path / 'no.json'}", "no.json"),
    ]:
        with pytest.raises(UsageError, match=needle):
            parse_guard(spec)


def test_audit_and_eval_with_the_guard(tmp_path, capsys):
    from obliviate.diffusion.model import load_t2i
    from obliviate.diffusion.world import load_image_world, vocabulary

    class Cap:
        def readouterr(self):
            import types

            return types.SimpleNamespace(out="", err="")

    code, _, err = run_cli(
        [
            "world",
            "--images",
            "--out",
            tmp_path / "w",
            "--per-combination",
            2,
            "--classifiers",
            "--classifier-steps",
            5,
        ],
        Cap(),
    )
    assert code == 0, err
    tok = build_word_tokenizer(vocabulary(load_image_world(tmp_path / "w")))
    build_t2i(tok, T2IConfig(size=16, channels=(16, 32), text_dim=32, text_layers=1, text_heads=2), seed=0).save(
        tmp_path / "m"
    )
    before = digest(load_t2i(tmp_path / "m"))
    common = ["--suite", "diffusion", "--data", tmp_path / "w", "--concept", "star", "--ddim-steps", 2]
    code, _, err = run_cli(
        [
            "audit",
            str(tmp_path / "m"),
            *common,
            "--target",
            tmp_path / "m",
            "--guard",
            "gog",
            "--limit",
            1,
            "--attacks",
            "unlearndiffatk",
            "--option",
            "unlearndiffatk.steps=1",
            "--out",
            tmp_path / "au",
        ],
        capsys,
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "au" / "audit.json").read_text())
    assert doc["guard"] == "gog" and 0 <= doc["attacks"]["unlearndiffatk"]["asr"] <= 1
    code, _, err = run_cli(
        [
            "eval",
            *common,
            "--model",
            f"base={tmp_path / 'm'}",
            "--guard",
            "gog",
            "--limit",
            2,
            "--out",
            tmp_path / "ev",
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads((tmp_path / "ev" / "results.json").read_text())["results"]
    assert set(res) == {"base", "base+gog"} and "over_erasure[look-alike]" in res["base+gog"]
    assert digest(load_t2i(tmp_path / "m")) == before  # nothing written back
    code, _, err = run_cli(
        ["audit", str(tmp_path / "m"), *common, "--target", tmp_path / "m", "--guard", "sld", "--out", tmp_path / "x"],
        capsys,
    )
    assert code == 2 and "gog" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
