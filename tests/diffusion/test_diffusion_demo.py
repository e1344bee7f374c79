"""`demo --suite diffusion --size smoke`: the whole erasure path (world, classifiers, base model, erasers,
evaluation, attacks) runs and writes its figures; and the diffusion evaluation's metrics on hand-made predictions."""

import json

import numpy as np
import pytest
import torch

from tests.cli.test_cli import run_cli


@pytest.mark.slow  # about 40 s: `make test-slow`
def test_smoke_demo_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = run_cli(
        ["demo", "--suite", "diffusion", "--size", "smoke", "--out", out, "--threads", "2", "--workers", "2"], capsys
    )
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    runs = doc["results"]
    assert set(runs) == {"base/star", "uce/star", "esd_x/star"}
    for name in ("uce/star", "esd_x/star"):
        m = runs[name]
        for k in (
            "ua",
            "ira",
            "cra",
            "over_erasure",
            "fd_classifier",
            "pre_asr",
            "asr[unlearndiffatk]",
            "asr[concept_arithmetic]",
        ):
            assert k in m, (name, k)
        assert 0 <= m["ua"] <= 1
        # the table's attack figures are its audit's: ASR is the share of per-prompt successes (the smoke models have
        # no known ASR; test_diffusion_attacks.py checks the attack's successes on a model whose answer is known)
        aud = doc["audit"][name]
        per_prompt = aud["attacks"]["unlearndiffatk"]["per_prompt"]
        assert len(per_prompt) == len(aud["prompts"]) == 1  # the smoke size attacks one prompt
        assert m["pre_asr"] == aud["pre_asr"] and m["asr[unlearndiffatk]"] == sum(per_prompt) / len(per_prompt)
        for attack, fig in aud["attacks"].items():  # what each attack found, kept with its image
            rows = (out / fig["findings"] / "findings.jsonl").read_text().splitlines()
            assert rows and all((out / fig["findings"] / json.loads(r)["image"]).is_file() for r in rows), attack
        assert {"over_erasure[look-alike]", "over_erasure[word-alike]"} <= set(m)
        assert (out / "grids" / f"{name.replace('/', '_')}.png").is_file()
    assert set(doc["base"]["factor_accuracy"]) == {"object", "colour", "style", "background"}
    assert "demo wall time" in stdout


def test_unknown_suite_and_size(capsys):
    for args in (
        ["--suite", "diffusionn"],
        ["--suite", "diffusion", "--size", "big"],
        ["--suite", "diffusion", "--workers", "0"],
        ["--suite", "refusal", "--workers", "2"],
    ):
        code, _, err = run_cli(["demo", *args, "--out", "x"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1


def test_evaluate_concept_metrics_on_a_known_model(monkeypatch):
    """A fake model that draws each prompt's own ground-truth render: UA 0 (the concept is still drawn), IRA, CRA and
    over-erasure as perfect as the classifiers; a model that draws a circle for every star prompt: UA 1."""
    from obliviate.diffusion import evaluate as ev
    from obliviate.diffusion.classifiers import train_factor_classifiers
    from obliviate.diffusion.model import to_unit
    from obliviate.diffusion.world import ImageWorldSpec, build_image_world, render

    spec = ImageWorldSpec(per_combination=2)
    world = build_image_world(spec)
    clf = train_factor_classifiers(spec, steps=300)

    def fake(swap):
        def gen(model, prompts, cfg):
            rows = {r["text"]: r for r in world["prompts"] + world["benign"]}
            ims = []
            for p in prompts:
                r = rows[p]
                obj = "circle" if (swap and r["object"] == "star") else r["object"]
                ims.append(render(obj, r["colour"], r["style"], r.get("background") or "white", size=spec.size))
            return to_unit(np.stack(ims))

        return gen

    monkeypatch.setattr(ev, "generate", fake(False))
    m, _ = ev.evaluate_concept(None, clf, world, "star", ev.SampleConfig(max_prompts=12))
    assert m["ua"] == pytest.approx(0.0, abs=0.1) and m["ira"] > 0.9 and m["cra"] > 0.9 and m["over_erasure"] < 0.1
    monkeypatch.setattr(ev, "generate", fake(True))
    m, _ = ev.evaluate_concept(None, clf, world, "star", ev.SampleConfig(max_prompts=12))
    assert m["ua"] == pytest.approx(1.0, abs=0.1) and m["ira"] > 0.9


def test_every_eraser_runs_as_the_demo_calls_it():
    """The full demo runs every registered eraser with only `steps` and, where `needs_anchor`, a look-alike guide:
    none may need more (SalUn once did, and the full demo stopped at it)."""
    from obliviate.demos.diffusion import demo_erase
    from obliviate.diffusion.erasers import ERASERS, load_all
    from obliviate.diffusion.model import T2IConfig, build_t2i, build_word_tokenizer
    from obliviate.diffusion.world import ImageWorldSpec, build_image_world, vocabulary

    load_all()
    world = build_image_world(ImageWorldSpec(per_combination=2))
    base = build_t2i(build_word_tokenizer(vocabulary(world)), T2IConfig(channels=(16, 32)), seed=0)
    before = {n: p.clone() for n, p in base.unet.named_parameters()}
    for name in ERASERS.names():
        edited = demo_erase(name, base, world, "star", steps=1, ddim_steps=3)
        changed = [n for n, p in edited.unet.named_parameters() if not torch.equal(p, before[n])] + [
            n
            for n, p in edited.text_encoder.named_parameters()
            if not torch.equal(p, dict(base.text_encoder.named_parameters())[n])
        ]
        assert changed, name  # it edited something
    assert all(torch.equal(p, before[n]) for n, p in base.unet.named_parameters())  # the base is left alone


def test_demo_methods_name_its_erasers_and_the_guard(tmp_path, capsys):
    """`--methods` picks the erasers and the guard; the guard's row changes no weight and is attacked like the
    erasers (its audit is on disk for --replay)."""
    out = tmp_path / "demo"
    code, _, err = run_cli(
        ["demo", "--suite", "diffusion", "--size", "smoke", "--methods", "uce,gog", "--out", out, "--workers", "1"],
        capsys,
    )
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["results"]) == {"base/star", "uce/star", "gog/star"}
    assert doc["results"]["gog/star"]["seconds"] == 0.0 and "asr[unlearndiffatk]" in doc["results"]["gog/star"]
    assert (out / "audits" / "gog_star" / "audit.json").is_file()
    code, _, err = run_cli(
        ["demo", "--suite", "diffusion", "--size", "smoke", "--methods", "uec", "--out", out], capsys
    )
    assert code == 2 and "did you mean 'uce'" in err


def test_an_eraser_kept_to_the_first_concept_runs_on_it_alone(tmp_path):
    """`first_concept_only` (AdvUnlearn in the full demo, for time): such an eraser erases the object only, the others
    every concept; `--methods` (the CLI) clears it, so a named eraser runs on every concept."""
    from dataclasses import replace

    from obliviate.demos.diffusion import FULL, SMOKE, run_diffusion_demo

    assert FULL.first_concept_only == ("advunlearn",)
    size = replace(SMOKE, concepts=("star", "red"), erasers=("uce", "esd_x"), first_concept_only=("esd_x",), attacks=())
    doc = run_diffusion_demo(tmp_path / "d", size=size, progress=False, workers=1)
    assert set(doc["results"]) == {"base/star", "base/red", "uce/star", "uce/red", "esd_x/star"}
