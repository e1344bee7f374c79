"""The image world (determinism, labels, textures, erasure splits, benign prompts), its factor classifiers and
`obliviate world --images`."""

import json

import numpy as np
import pytest
import torch

from obliviate.core.errors import UsageError
from obliviate.diffusion.world import (
    CONCEPT_FACTORS,
    FACTORS,
    OBJECTS,
    STYLES,
    TEMPLATES,
    ImageWorldSpec,
    _shape_mask,
    build_image_world,
    caption,
    concept_splits,
    load_image_world,
    render,
    spec_of,
    staged_dir,
    vocabulary,
    write_image_world,
)
from tests.cli.test_cli import run_cli

SMALL = ImageWorldSpec(seed=3, per_combination=2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world():
    return build_image_world(SMALL)


def test_files_are_byte_identical_and_seeded(tmp_path):
    a, b = write_image_world(tmp_path / "a", SMALL), write_image_world(tmp_path / "b", SMALL)
    assert a == b
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["benign_prompts.jsonl", "factors.json", "images.npy", "labels.jsonl", "prompts.jsonl"]
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes(), n
    images = np.load(tmp_path / "a" / "images.npy")
    assert images.dtype == np.uint8 and images.shape == (6 * 6 * 4 * 3 * 2, 16, 16, 3)
    other = write_image_world(tmp_path / "c", ImageWorldSpec(seed=4, per_combination=2))
    assert other["files"]["images.npy"]["sha256"] != a["files"]["images.npy"]["sha256"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging directories left behind"
    loaded = load_image_world(tmp_path / "a")
    assert spec_of(loaded) == SMALL and loaded["labels"][5] == build_image_world(SMALL)["labels"][5]
    with pytest.raises(UsageError, match="not empty"):
        write_image_world(tmp_path / "a", SMALL)


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_dir(tmp_path / "w") as d:
            (d / "half.npy").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "bad",
    [
        dict(size=3),
        dict(per_combination=0),
        dict(per_combination=1),
        dict(objects=("circle", "blob")),
        dict(colours=("red",)),
        dict(styles=("solid", "solid")),
    ],
)
def test_spec_validation(bad):
    with pytest.raises(ValueError):
        ImageWorldSpec(**bad)


def test_labels_match_captions_and_images(world):
    labels, images = world["labels"], world["images"]
    assert len(labels) == len(images) and [r["id"] for r in labels] == list(range(len(labels)))
    for r in labels:
        assert r["caption"] == r["captions"][r["template"]]
        for i, text in enumerate(r["captions"]):
            words = text.split()
            assert all(r[f] in words for f in CONCEPT_FACTORS), text
            assert (r["background"] in words) == ("{background}" in TEMPLATES[i]), text
    assert {r["split"] for r in labels[::2]} == {"train"} and {r["split"] for r in labels[1::2]} == {"test"}
    # jitter: the two images of one combination differ; each image is its labels' render (right background corner)
    assert all((images[i] != images[i + 1]).any() for i in range(0, 40, 2))
    for r, img in zip(labels[:50], images):
        assert (img[0, 0] == render(r["object"], r["colour"], r["style"], r["background"])[0, 0]).all()
    words = vocabulary(world)
    assert set(words) <= {"a", "in", "on", "style"} | {v for f in FACTORS for v in world["factors"][f]}
    for p in world["prompts"]:
        assert p["text"] == caption(*(p[f] for f in FACTORS), template=p["template"])
    assert len(world["prompts"]) == 6 * 6 * 4 and len({p["text"] for p in world["prompts"]}) == 144


def test_texture_is_visible_inside_the_shape_only():
    for obj in OBJECTS:
        mask = _shape_mask(obj, 16, 8, 8, 0.36 * 16)
        assert 25 <= mask.sum() <= 150, obj
        solid = render(obj, "red", "solid", "white")
        for style in STYLES[1:]:
            img = render(obj, "red", style, "white")
            diff = (img != solid).any(-1)
            assert diff[mask].sum() >= 4, (obj, style)  # a few texture pixels at least, even in a star
            assert not diff[~mask].any(), (obj, style)  # the background is untouched
        styles = [render(obj, "blue", s, "black").tobytes() for s in STYLES]
        assert len(set(styles)) == len(STYLES)
    shapes = {render(o, "red", "solid", "white").tobytes() for o in OBJECTS}
    assert len(shapes) == len(OBJECTS)


def test_concept_splits_partition(world):
    prompts = world["prompts"]
    for factor in CONCEPT_FACTORS:
        for value in world["factors"][factor]:
            s = concept_splits(world, factor, value)
            target, neigh, unrel = ({p["id"] for p in s[k]} for k in ("target", "neighbour", "unrelated"))
            assert target and neigh and not target & neigh and target | neigh == {p["id"] for p in prompts}
            assert unrel == neigh  # one set of generations, scored on different factors (IRA vs CRA)
            assert all(p[factor] == value and p["score"] == [factor] for p in s["target"])
            assert all(value not in p["text"].split() for p in s["neighbour"] + s["unrelated"])
            assert all(factor not in p["score"] and p["score"] for p in s["unrelated"])
    assert concept_splits(world, None, "star")["target"] == concept_splits(world, "object", "star")["target"]
    bg = concept_splits(world, "background", "white")
    assert all(p["background"] not in ("white", None) for p in bg["neighbour"])
    assert len(bg["target"]) + len(bg["unrelated"]) == len(prompts)
    with pytest.raises(UsageError, match="did you mean 'star'"):
        concept_splits(world, None, "stars")
    with pytest.raises(UsageError, match="not a colour"):
        concept_splits(world, "colour", "star")


def test_benign_prompts_share_words_not_the_concept(world):
    benign, alike = world["benign"], world["factors"]["look_alikes"]
    assert {(b["concept_factor"], b["relation"]) for b in benign} == {
        (f, r) for f in CONCEPT_FACTORS for r in ("look-alike", "word-alike")
    }
    for b in benign:
        assert b["concept"] not in b["text"].split() and b[b["concept_factor"]] != b["concept"]
        assert b["text"] == caption(*(b[f] for f in FACTORS), template=b["template"])
        rank = alike[b["concept_factor"]][b["concept"]].index(b[b["concept_factor"]])
        assert (rank < 2) == (b["relation"] == "look-alike")
    assert alike["colour"]["red"][0] == "orange" and alike["style"]["solid"][0] == "dotted"


@pytest.fixture(scope="module")
def classifiers():
    from obliviate.diffusion.classifiers import ClassifierConfig, train_factor_classifiers

    return train_factor_classifiers(SMALL, config=ClassifierConfig(steps=300, pool=2048, n_eval=500))


def test_classifiers_score_fresh_renders(classifiers):
    from obliviate.diffusion.classifiers import fresh_accuracy

    acc = fresh_accuracy(classifiers, SMALL, n=600, seed=5)
    assert set(acc) == set(FACTORS) and min(acc.values()) >= 0.9, acc
    assert min(classifiers.meta["fresh_accuracy"].values()) >= 0.9


def test_classifiers_accept_both_layouts_and_round_trip(classifiers, world, tmp_path):
    from obliviate.diffusion.classifiers import FactorClassifiers

    images = world["images"][:64]
    pred = classifiers.predict(images)
    floats = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert all(torch.equal(pred[f], classifiers.predict(floats)[f]) for f in FACTORS)
    assert all(p.dtype == torch.long and p.shape == (64,) for p in pred.values())
    acc = classifiers.accuracy(images, world["labels"][:64])
    assert acc == classifiers.accuracy(images, {f: [r[f] for r in world["labels"][:64]] for f in FACTORS})
    feats = classifiers.features(images)
    assert feats.shape == (64, 4 * 64)
    classifiers.save(tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["classifiers.json", "classifiers.safetensors"]
    again = FactorClassifiers.load(tmp_path / "c")
    assert all(torch.equal(pred[f], again.predict(images)[f]) for f in FACTORS)
    assert torch.equal(feats, again.features(images)) and again.values == classifiers.values
    with pytest.raises(UsageError):
        FactorClassifiers.load(tmp_path)


def test_cli_writes_the_image_world_and_rejects_bad_input(tmp_path, capsys):
    out = tmp_path / "w"
    code, text, err = run_cli(
        [
            "world",
            "--images",
            "--out",
            out,
            "--seed",
            3,
            "--per-combination",
            2,
            "--classifiers",
            "--classifier-steps",
            5,
            "--threads",
            1,
        ],
        capsys,
    )
    assert code == 0, err
    assert "prompts.jsonl" in text and "classifiers: accuracy" in text
    factors = json.loads((out / "factors.json").read_text())
    assert factors["spec"]["seed"] == 3 and factors["object"] == list(SMALL.objects)
    assert (out / "classifiers" / "classifiers.safetensors").is_file()
    assert (out / "images.npy").read_bytes() == (lambda d: (write_image_world(d, SMALL), d)[1])(
        tmp_path / "direct"
    ).joinpath("images.npy").read_bytes()
    for args, needle in (
        (["--images", "--size", 3], "size must be between"),
        (["--size", 16], "--size applies only with --images"),
        (["--images", "--classifier-steps", 3], "only with --classifiers"),
    ):
        code, _, err = run_cli(["world", "--out", tmp_path / "bad", *args], capsys)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and needle in lines[0], err
        assert not (tmp_path / "bad").exists()
    code, _, err = run_cli(["world", "--images", "--out", out], capsys)
    assert code == 2 and "not empty" in err
