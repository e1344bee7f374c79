"""Several concepts in one run (UCE's joint closed form, the others one after another) and sequential requests
scored after each, as UnlearnCanvas scores them; the erase command's multi-concept input and its bad input."""

import json

import pytest
import torch

from obliviate.diffusion.erasers import ERASERS, Eraser, cross_attention_kv, load_all
from obliviate.diffusion.erasers.uce import aligned_keys
from obliviate.diffusion.model import T2IConfig, build_t2i, build_word_tokenizer
from tests.cli.test_cli import run_cli

CAPTIONS = ["a striped red star", "a dotted blue circle", "a solid green square", "a red star in dotted style"]


@pytest.fixture(scope="module")
def tiny():
    tok = build_word_tokenizer(CAPTIONS, max_length=8)
    return build_t2i(
        tok, T2IConfig(size=8, channels=(16, 32), text_dim=32, text_layers=1, text_heads=2, max_length=8), seed=0
    )


def test_uce_erases_two_concepts_in_one_closed_form(tiny):
    """Eq. 7 with both concepts' erase terms: with lam -> 0 every cross-attention K/V maps each concept's keys onto
    the guide's outputs at once (one edit, not two: the second edit of a sequential run would move the first)."""
    load_all()
    uce = ERASERS.get("uce")(lam=1e-9, preserve_scale=0.0)
    both = uce.erase_many(tiny, ["star", "circle"], guide="")
    for concept in ("star", "circle"):
        c_e, c_g = aligned_keys(tiny, concept, "")
        for old, new in zip(cross_attention_kv(tiny.unet), cross_attention_kv(both.unet)):
            assert torch.allclose(new.weight.double() @ c_e.T, old.weight.double() @ c_g.T, atol=1e-3)
    one = uce.erase_many(tiny, ["star"])  # one concept: the single-concept edit
    ref = uce.erase(tiny, "star")
    assert all(
        torch.equal(a.weight, b.weight) for a, b in zip(cross_attention_kv(one.unet), cross_attention_kv(ref.unet))
    )


def test_the_other_erasers_take_several_concepts_one_after_another(tiny, monkeypatch):
    load_all()
    assert ERASERS.get("esd_x").erase_many is Eraser.erase_many
    assert ERASERS.get("rece").erase_many is Eraser.erase_many  # RECE is UCE-based but erases one concept per run
    seen = []
    esd = ERASERS.get("esd_x")(steps=1, ddim_steps=2, batch_size=1)
    real = type(esd).erase

    def spy(self, model, concept, **kw):
        seen.append((concept, model))
        return real(self, model, concept, **kw)

    monkeypatch.setattr(type(esd), "erase", spy)
    out = esd.erase_many(tiny, ["star", "circle"])
    assert [c for c, _ in seen] == ["star", "circle"] and seen[0][1] is tiny and seen[1][1] is not tiny
    assert out is not tiny and out is not seen[1][1]  # each request erases the model the previous one left


@pytest.fixture(scope="module")
def world_and_model(tmp_path_factory):
    from obliviate.diffusion.world import load_image_world, vocabulary

    d = tmp_path_factory.mktemp("requests")

    class Cap:
        def readouterr(self):
            import types

            return types.SimpleNamespace(out="", err="")

    code, _, err = run_cli(
        ["world", "--images", "--out", d / "world", "--per-combination", 2, "--classifiers", "--classifier-steps", 5],
        Cap(),
    )
    assert code == 0, err
    world = load_image_world(d / "world")
    tok = build_word_tokenizer(vocabulary(world))
    build_t2i(tok, T2IConfig(size=16, channels=(16, 32), text_dim=32, text_layers=1, text_heads=2), seed=0).save(
        d / "m"
    )
    return d


def test_erase_several_concepts_and_score_them(world_and_model, tmp_path, capsys):
    d = world_and_model
    base = ["erase", "uce", "--model", d / "m", "--data", d / "world", "--limit", 2, "--ddim-steps", 2]
    code, out, err = run_cli([*base, "--concept", "star", "--concept", "red", "--out", tmp_path / "joint"], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "joint" / "requests.json").read_text())
    assert doc["joint"] and not doc["sequential"] and doc["concepts"] == ["star", "red"]
    before, after = doc["rows"]
    assert set(after) >= {"ua[star]", "ua[red]", "ua", "ira", "cra"} and after["ua"] == pytest.approx(
        (after["ua[star]"] + after["ua[red]"]) / 2
    )
    assert "UA[star]" in out and (tmp_path / "joint" / "unet").is_dir()
    code, out, err = run_cli(
        [
            *base,
            "--concept",
            "star",
            "--concept",
            "red",
            "--concept",
            "striped",
            "--sequential",
            "--out",
            tmp_path / "seq",
        ],
        capsys,
    )
    assert code == 0, err
    rows = json.loads((tmp_path / "seq" / "requests.json").read_text())["rows"]
    assert [r["request"] for r in rows] == [0, 1, 2, 3] and [r["concept"] for r in rows[1:]] == [
        "star",
        "red",
        "striped",
    ]
    assert "ua[red]" not in rows[1] and "ua[star]" in rows[3] and "ua[striped]" in rows[3]  # every earlier concept
    assert all(0 <= r["ira"] <= 1 and 0 <= r["cra"] <= 1 for r in rows)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--concept", "star", "--concept", "star"], "--concept 'star' is given twice"),
        (["--concept", "stra", "--data", "WORLD"], "did you mean 'star'"),
        (["--concept", "stra"], "did you mean 'star'"),
        (["--concept", "star", "--sequential"], "give --data"),
    ],
)
def test_erase_bad_input(world_and_model, tmp_path, capsys, args, needle):
    d = world_and_model
    args = [str(d / "world") if a == "WORLD" else a for a in args]
    code, _, err = run_cli(["erase", "uce", "--model", d / "m", *args, "--out", tmp_path / "e"], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "e").exists()
