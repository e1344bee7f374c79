"""The built-in image world: small RGB images of abstract shapes rendered from four factors, with captions.

Factors (every name is one lowercase word, and no word belongs to two factors, so a concept word names its factor):

    object      circle square triangle star cross heart          (catalogue adds: diamond ring)
    colour      red green blue yellow purple orange              (catalogue adds: cyan pink)
    style       solid striped dotted checkered
    background  white black gray

Why these sizes. A throwaway prototype showed that a ~1M-parameter pixel-space UNet learns 6 objects x 6 colours x
4 textures at 16x16 in about 20 minutes on one CPU thread, with shapes the slowest factor (issue 11). 32x32 costs
5.5x per step, so 16x16 is the default; the shapes are drawn large (radius ~0.36 of the image) so that they stay
tellable apart at that size. Backgrounds add a fourth, easy factor for cross-factor retention (CRA).

Rendering is numpy only: binary masks on pixel centres, no anti-aliasing. Each image gets a small seeded jitter
(centre +-6% of the size, radius x0.9-1.05), so that images of one combination differ. The texture's second tone
is the colour darkened (lightened on a black background), so the outline stays visible on every background; its
pattern is anchored to the pixel grid (stripes 2 px on / 2 off, 2-px checks, 1-px dots every 3 px) and drawn inside
the shape only. Captions come from four templates; each names the object, colour and style, two also name the
background. The same spec gives byte-identical files (`write_image_world`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path

import numpy as np

from obliviate.core.errors import UsageError

FACTORS = ("object", "colour", "style", "background")
CONCEPT_FACTORS = ("object", "colour", "style")  # the factors erasers target and benign prompts are written for

OBJECTS = ("circle", "square", "triangle", "star", "cross", "heart", "diamond", "ring")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 230),
    "yellow": (240, 200, 30),
    "purple": (150, 60, 200),
    "orange": (250, 140, 30),
    "cyan": (30, 200, 210),
    "pink": (250, 130, 200),
}
STYLES = ("solid", "striped", "dotted", "checkered")
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
CATALOGUE = {"object": OBJECTS, "colour": tuple(COLOURS), "style": STYLES, "background": tuple(BACKGROUNDS)}

TEMPLATES = (
    "a {style} {colour} {object}",
    "a {colour} {object} in {style} style",
    "a {style} {colour} {object} on {background}",
    "a {colour} {object} in {style} style on {background}",
)


@dataclass
class ImageWorldSpec:
    """What to render. The same spec gives byte-identical files; each factor is an ordered subset of CATALOGUE."""

    seed: int = 0
    size: int = 16  # images are size x size RGB
    per_combination: int = 8  # images per (object, colour, style, background)
    test_per_combination: int = 1  # of which the last ones are the test split
    objects: tuple = OBJECTS[:6]
    colours: tuple = tuple(COLOURS)[:6]
    styles: tuple = STYLES
    backgrounds: tuple = tuple(BACKGROUNDS)
    jitter: bool = True  # False: every image is the canonical, centred render

    def __post_init__(self):
        if not 8 <= self.size <= 128:
            raise ValueError(f"size must be between 8 and 128 pixels (got {self.size})")
        if self.per_combination < 1:
            raise ValueError(f"per_combination must be >= 1 (got {self.per_combination})")
        if not 0 <= self.test_per_combination < self.per_combination:
            raise ValueError(
                f"test_per_combination must be in [0, per_combination) "
                f"(got {self.test_per_combination} of {self.per_combination})"
            )
        for factor in FACTORS:
            values = tuple(getattr(self, factor_attr(factor)))
            setattr(self, factor_attr(factor), values)
            unknown = [v for v in values if v not in CATALOGUE[factor]]
            if unknown:
                raise ValueError(f"unknown {factor} {unknown[0]!r}; known: {', '.join(CATALOGUE[factor])}")
            if len(values) < 2 or len(set(values)) != len(values):
                raise ValueError(f"{factor} needs at least 2 distinct values (got {list(values)})")

    def values(self) -> dict[str, list[str]]:
        return {f: list(getattr(self, factor_attr(f))) for f in FACTORS}


def factor_attr(factor: str) -> str:
    return {"object": "objects", "colour": "colours", "style": "styles", "background": "backgrounds"}[factor]


# ---------------------------------------------------------------- rendering


def _shape_mask(obj: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    """bool [size, size]: pixel centres inside `obj` centred at (cx, cy) with radius r (y grows downwards)."""
    c = np.arange(size) + 0.5
    u, v = (c[None, :] - cx) / r, (c[:, None] - cy) / r
    if obj == "circle":
        return u * u + v * v <= 0.95
    if obj == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.78
    if obj == "diamond":
        return np.abs(u) + np.abs(v) <= 1.05
    if obj == "ring":
        d = u * u + v * v
        return (d <= 1.0) & (d >= 0.3)
    if obj == "triangle":  # apex up, base at v = 0.8
        return (v <= 0.8) & (np.abs(u) <= (v + 1.0) / 1.6)
    if obj == "cross":
        arm = 0.34
        return ((np.abs(u) <= arm) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= arm) & (np.abs(u) <= 1.0))
    if obj == "heart":  # two lobes over a downward triangle; the notch between the lobes is ~2 px at 16x16
        lobes = (np.abs(u) - 0.48) ** 2 + (v + 0.38) ** 2 <= 0.27
        return lobes | ((v >= -0.38) & (v <= 0.95) & (np.abs(u) <= 0.98 * (0.95 - v) / 1.33))
    if obj == "star":  # five points; inside iff inside the polygon (ray casting, vectorised over pixels)
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.15, 0.5)
        px, py = rad * np.cos(ang), rad * np.sin(ang) + 0.08
        inside = np.zeros((size, size), dtype=bool)
        U, V = np.broadcast_arrays(u, v)
        for i in range(10):
            x1, y1, x2, y2 = px[i], py[i], px[i - 1], py[i - 1]
            crosses = (y1 > V) != (y2 > V)
            with np.errstate(divide="ignore", invalid="ignore"):
                xint = x1 + (V - y1) * (x2 - x1) / (y2 - y1)
            inside ^= crosses & (U < xint)
        return inside
    raise ValueError(f"unknown object {obj!r}")


def _pattern(style: str, size: int) -> np.ndarray:
    """bool [size, size]: where the texture's second tone goes (anchored to the pixel grid)."""
    y, x = np.mgrid[0:size, 0:size]
    if style == "solid":
        return np.zeros((size, size), dtype=bool)
    if style == "striped":
        return (y // 2) % 2 == 1
    if style == "checkered":
        return ((x // 4) + (y // 4)) % 2 == 1  # 4-px checks: 2-px ones were mixed up with the 2-px stripes
    if style == "dotted":
        return (x % 3 == 1) & (y % 3 == 1)
    raise ValueError(f"unknown style {style!r}")


def _tone(colour: np.ndarray, background: str) -> np.ndarray:
    """The texture's second tone: the colour darkened, or lightened on black, so the outline stays visible."""
    target = 255.0 if background == "black" else 0.0
    return colour + 0.55 * (target - colour)


def render(object: str, colour: str, style: str, background: str, size: int = 16, rng=None) -> np.ndarray:
    """uint8 [size, size, 3]. `rng` (a numpy Generator or an int seed) adds the position/scale jitter; None
    draws the canonical, centred image."""
    if rng is not None and not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    cx = cy = size / 2
    r = 0.36 * size
    if rng is not None:
        cx, cy = cx + rng.uniform(-0.06, 0.06, size=2) * size
        r *= rng.uniform(0.9, 1.05)
    rgb = np.asarray(COLOURS[colour], dtype=np.float64)
    img = np.empty((size, size, 3), dtype=np.float64)
    img[:] = BACKGROUNDS[background]
    mask = _shape_mask(object, size, cx, cy, r)
    img[mask] = rgb
    img[mask & _pattern(style, size)] = _tone(rgb, background)
    return np.rint(img).astype(np.uint8)


def sample_images(spec: ImageWorldSpec, n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """n fresh renders of uniformly drawn combinations: (uint8 [n, H, W, 3], {factor: int64 [n] value indices})."""
    values = spec.values()
    labels = {f: rng.integers(0, len(values[f]), size=n) for f in FACTORS}
    images = np.stack(
        [
            render(*(values[f][labels[f][i]] for f in FACTORS), size=spec.size, rng=rng if spec.jitter else None)
            for i in range(n)
        ]
    )
    return images, labels


# ---------------------------------------------------------------- captions, prompts, look-alikes


def caption(object: str, colour: str, style: str, background: str | None = None, template: int = 0) -> str:
    """One caption; templates 2 and 3 name the background, so they need one."""
    if "{background}" in TEMPLATES[template] and background is None:
        raise ValueError(f"template {template} names the background")
    return TEMPLATES[template].format(object=object, colour=colour, style=style, background=background)


def look_alikes(spec: ImageWorldSpec) -> dict[str, dict[str, list[str]]]:
    """factor -> value -> the other values, most alike in appearance first: objects by the IoU of their canonical
    masks, colours and backgrounds by RGB distance, styles by the share of pixels whose tone differs."""
    values, n = spec.values(), spec.size

    def dist(factor, a, b):
        if factor == "object":
            ma, mb = (_shape_mask(o, n, n / 2, n / 2, 0.36 * n) for o in (a, b))
            return 1.0 - (ma & mb).sum() / (ma | mb).sum()
        if factor == "style":
            return float((_pattern(a, n) != _pattern(b, n)).mean())
        table = COLOURS if factor == "colour" else BACKGROUNDS
        return float(np.linalg.norm(np.subtract(table[a], table[b])))

    return {
        f: {a: sorted((b for b in vs if b != a), key=lambda b: (round(dist(f, a, b), 9), vs.index(b))) for a in vs}
        for f, vs in values.items()
    }


def _prompts(spec: ImageWorldSpec) -> list[dict]:
    """One evaluation prompt per (object, colour, style); templates and backgrounds rotate over the grid."""
    v, rows = spec.values(), []
    for (i, o), (j, c), (k, s) in product(*(enumerate(v[f]) for f in CONCEPT_FACTORS)):
        t = (i + j + k) % len(TEMPLATES)
        bg = v["background"][(i + 2 * j + k) % len(v["background"])] if "{background}" in TEMPLATES[t] else None
        rows.append(
            {
                "id": f"p{len(rows):04d}",
                "text": caption(o, c, s, bg, t),
                "object": o,
                "colour": c,
                "style": s,
                "background": bg,
                "template": t,
            }
        )
    return rows


def _benign(spec: ImageWorldSpec, prompts: list[dict], alike: dict) -> list[dict]:
    """OVERT-style benign prompts: for each concept value and each prompt naming it, the same prompt with the value
    swapped for its two nearest look-alikes ("look-alike") and for its least alike value ("word-alike": only the
    other words are shared). A good eraser keeps generating these correctly."""
    rows = []
    for factor in CONCEPT_FACTORS:
        for value in spec.values()[factor]:
            others = alike[factor][value]
            swaps = [(w, "look-alike") for w in others[:2]] + [(others[-1], "word-alike")] * (len(others) > 2)
            for p in (p for p in prompts if p[factor] == value):
                for w, relation in swaps:
                    labels = {f: p[f] for f in FACTORS} | {factor: w}
                    rows.append(
                        {
                            "id": f"b{len(rows):05d}",
                            "concept_factor": factor,
                            "concept": value,
                            "relation": relation,
                            "template": p["template"],
                            "text": caption(*(labels[f] for f in FACTORS), template=p["template"]),
                            **labels,
                        }
                    )
    return rows


def build_image_world(spec: ImageWorldSpec = ImageWorldSpec()) -> dict:
    """Everything `write_image_world` writes, in memory: images, labels, factors, prompts, benign."""
    v = spec.values()
    images, labels = [], []
    combos = list(product(*(enumerate(v[f]) for f in FACTORS)))
    for n_combo, combo in enumerate(combos):
        names = [name for _, name in combo]
        # one generator per image, keyed by catalogue indices: a subset world renders the same images
        key = [CATALOGUE[f].index(name) for f, name in zip(FACTORS, names)]
        for k in range(spec.per_combination):
            rng = np.random.default_rng([spec.seed, spec.size, *key, k]) if spec.jitter else None
            images.append(render(*names, size=spec.size, rng=rng))
            t = (n_combo + k) % len(TEMPLATES)
            labels.append(
                {
                    "id": len(labels),
                    "caption": caption(*names, template=t),
                    "captions": [caption(*names, template=i) for i in range(len(TEMPLATES))],
                    **dict(zip(FACTORS, names)),
                    "template": t,
                    "split": "test" if k >= spec.per_combination - spec.test_per_combination else "train",
                }
            )
    prompts = _prompts(spec)
    alike = look_alikes(spec)
    factors = {
        **v,
        "size": spec.size,
        "seed": spec.seed,
        "templates": list(TEMPLATES),
        "look_alikes": alike,
        "spec": asdict(spec),
    }
    return {
        "images": np.stack(images),
        "labels": labels,
        "factors": factors,
        "prompts": prompts,
        "benign": _benign(spec, prompts, alike),
    }


# ---------------------------------------------------------------- files


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


@contextlib.contextmanager
def staged_dir(out: str | Path):
    """Yield a fresh sibling temporary directory; on success it becomes `out` (which must be absent or empty),
    on any error it is removed, so a reader never sees half a world."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"output directory is not empty: {out} (choose a new --out)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_world_files(d: Path, spec: ImageWorldSpec) -> dict:
    """Write the world's files into an existing directory `d`; returns factors.json's content."""
    world = build_image_world(spec)
    buf = io.BytesIO()
    np.save(buf, world["images"], allow_pickle=False)
    blobs = {
        "images.npy": buf.getvalue(),
        "labels.jsonl": _jsonl(world["labels"]),
        "prompts.jsonl": _jsonl(world["prompts"]),
        "benign_prompts.jsonl": _jsonl(world["benign"]),
    }
    counts = {
        "images.npy": len(world["images"]),
        "labels.jsonl": len(world["labels"]),
        "prompts.jsonl": len(world["prompts"]),
        "benign_prompts.jsonl": len(world["benign"]),
    }
    factors = world["factors"] | {
        "kind": "obliviate-image-world",
        "files": {name: {"n": counts[name], "sha256": hashlib.sha256(b).hexdigest()} for name, b in blobs.items()},
    }
    blobs["factors.json"] = (json.dumps(factors, indent=2, sort_keys=True) + "\n").encode("utf-8")
    for name, b in blobs.items():
        (Path(d) / name).write_bytes(b)
    return factors


def write_image_world(out: str | Path, spec: ImageWorldSpec = ImageWorldSpec()) -> dict:
    """Write images.npy, labels.jsonl, factors.json, prompts.jsonl and benign_prompts.jsonl into `out`
    (staged in a temporary directory, renamed at the end). Returns factors.json's content."""
    with staged_dir(out) as tmp:
        return write_world_files(tmp, spec)


def load_image_world(d: str | Path) -> dict:
    """Read a written world back: the same keys as `build_image_world`."""
    d = Path(d)
    if not (d / "factors.json").is_file():
        raise UsageError(f"{d} is not an image world (no factors.json); write one with `obliviate world --images`")

    def rows(name):
        return [json.loads(line) for line in (d / name).read_text(encoding="utf-8").splitlines() if line.strip()]

    return {
        "images": np.load(d / "images.npy", allow_pickle=False),
        "labels": rows("labels.jsonl"),
        "factors": json.loads((d / "factors.json").read_text(encoding="utf-8")),
        "prompts": rows("prompts.jsonl"),
        "benign": rows("benign_prompts.jsonl"),
    }


def spec_of(world: dict) -> ImageWorldSpec:
    """The spec a built or loaded world came from."""
    return ImageWorldSpec(**world["factors"]["spec"])


def vocabulary(world: dict) -> list[str]:
    """Every word of the captions and prompts, sorted (for a word-level tokenizer)."""
    texts = [c for r in world["labels"] for c in r["captions"]] + [p["text"] for p in world["prompts"]]
    texts += [b["text"] for b in world["benign"]]
    return sorted({w for t in texts for w in t.split()})


def factor_of(world: dict, value: str) -> str:
    """The factor a concept word belongs to (UsageError, with a suggestion, for a word no factor has)."""
    import difflib

    for f in FACTORS:
        if value in world["factors"][f]:
            return f
    known = [v for f in FACTORS for v in world["factors"][f]]
    close = difflib.get_close_matches(value, known, n=1, cutoff=0.5)
    raise UsageError(
        f"unknown concept {value!r}"
        + (f"; did you mean {close[0]!r}?" if close else "")
        + f" (known: {', '.join(known)})"
    )


def concept_splits(world: dict, factor: str | None, value: str) -> dict[str, list[dict]]:
    """Prompts for erasing `value` of `factor` (None: inferred from the word), as UnlearnCanvas scores them:

    target     prompts naming the value                        -> UA  (share NOT classified as the value)
    neighbour  prompts naming another value of the same factor -> IRA (accuracy of that factor's classifier)
    unrelated  prompts not naming the value                    -> CRA (accuracy on the other factors)

    `neighbour` and `unrelated` hold the same prompts for object, colour and style (every prompt names one value
    of each), scored on different factors, so one set of generations serves both; each row carries `score`, the
    factors to score it on. Prompts without a background are unrelated, not neighbours, for a background concept.
    """
    factor = factor or factor_of(world, value)
    if factor not in FACTORS:
        raise UsageError(f"unknown factor {factor!r}; known: {', '.join(FACTORS)}")
    if value not in world["factors"][factor]:
        factor_of(world, value)  # raises with a suggestion if the word is unknown altogether
        raise UsageError(f"{value!r} is not a {factor} (it is a {factor_of(world, value)})")
    others = [f for f in FACTORS if f != factor]
    prompts = world["prompts"]
    return {
        "target": [p | {"score": [factor]} for p in prompts if p[factor] == value],
        "neighbour": [p | {"score": [factor]} for p in prompts if p[factor] not in (value, None)],
        "unrelated": [p | {"score": [f for f in others if p[f] is not None]} for p in prompts if p[factor] != value],
    }
