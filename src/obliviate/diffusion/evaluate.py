"""Scoring a text-to-image model against the image world: what it generates for each prompt, read by the factor
classifiers (`diffusion/metrics.py` holds the definitions, UnlearnCanvas's).

`evaluate_concept(model, clf, world, concept)` generates one image per prompt of three sets and returns:

- `ua`: target prompts (naming the concept) whose image is NOT classified as the concept, on its factor;
- `ira`: prompts naming another value of the concept's factor, classified right on that factor;
- `cra`: the same prompts, classified right on every other factor they name (pooled);
- `over_erasure`: benign look-alike / word-alike prompts for the concept (`benign_prompts.jsonl`) whose image
  misses a factor they name (OVERT-style), and `over_erasure[look-alike]`, `over_erasure[word-alike]`: the same
  per category of benign prompt;
- `fd_classifier`: Frechet distance between the classifier features of the non-target generations and of the
  world's test images (not Inception features: not comparable with published FIDs);
- `factor_accuracy[...]`: for the base model's sanity, accuracy per factor over every generated non-target prompt.

`base_accuracy(model, clf, world)` is the last figure over all prompts: how well a model generates what it is asked.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from obliviate.diffusion.metrics import (
    cross_domain_accuracy,
    factor_accuracy,
    frechet_distance,
    over_erasure_rate,
    unlearning_accuracy,
)


@dataclass
class SampleConfig:
    steps: int = 25  # DDIM steps
    guidance: float = 2.0
    seed: int = 0
    max_prompts: int | None = None  # per prompt set, a subset balanced over the prompts' labels; None: all

    def pick(self, rows: list[dict]) -> list[dict]:
        return balanced_subset(rows, self.max_prompts, self.seed) if self.max_prompts else rows


def balanced_subset(rows: list[dict], n: int, seed: int = 0) -> list[dict]:
    """At most n rows, in the set's order, chosen so that every label the rows carry (object, colour, style,
    background, template: every key but `id` and `text`) is spread as evenly as it can be: each pick is the row whose
    label values have been picked least so far, ties broken at random with `seed`. Not every k-th row: the sets are
    laid out factor by factor (a concept's 24 target prompts are 6 colours x 4 styles), so a stride aliases with the
    layout (every 6th prompt kept 2 of the 4 styles, every 4th one style); and a plain random subset of 4 can do the
    same by chance."""
    if len(rows) <= n:
        return rows
    labels = [[(k, str(v)) for k, v in r.items() if k not in ("id", "text")] for r in rows]
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)  # the tie-break: min() keeps the first of equals
    used: Counter = Counter()
    keep: list[int] = []
    for _ in range(n):
        best = min((i for i in order if i not in keep), key=lambda i: sum(used[lab] for lab in labels[i]))
        keep.append(best)
        used.update(labels[best])
    return [rows[i] for i in sorted(keep)]


def generate(model, prompts: list[str], cfg: SampleConfig) -> torch.Tensor:
    return model.sample(prompts, steps=cfg.steps, guidance=cfg.guidance, seed=cfg.seed) if prompts else torch.empty(0)


def _wants(clf, rows: list[dict], factors) -> dict[str, np.ndarray]:
    """factor -> value index per row (-1 where the row does not name the factor)."""
    return {f: np.array([clf.values[f].index(r[f]) if r.get(f) is not None else -1 for r in rows]) for f in factors}


def world_test_images(world: dict) -> np.ndarray:
    return world["images"][[i for i, r in enumerate(world["labels"]) if r["split"] == "test"]]


def evaluate_concept(model, clf, world: dict, concept: str, cfg: SampleConfig = SampleConfig()) -> tuple[dict, dict]:
    """(metrics, artefacts): artefacts hold the generated images per set and the rows, for grids and audits."""
    from obliviate.diffusion.world import concept_splits, factor_of

    factor = factor_of(world, concept)
    splits = concept_splits(world, factor, concept)
    sets = {
        "target": cfg.pick(splits["target"]),
        "others": cfg.pick(splits["unrelated"]),
        "benign": cfg.pick([b for b in world["benign"] if b["concept"] == concept]),
    }
    texts = [r["text"] for rows in sets.values() for r in rows]
    images = generate(model, texts, cfg)
    out, at = {}, 0
    for name, rows in sets.items():
        out[name], at = images[at : at + len(rows)], at + len(rows)
    pred = {name: {f: v.numpy() for f, v in clf.predict(out[name]).items()} if len(out[name]) else {} for name in sets}
    others = [f for f in clf.factors if f != factor]
    w_others = _wants(clf, sets["others"], clf.factors)
    w_benign = _wants(clf, sets["benign"], clf.factors)
    neighbour = w_others[factor] >= 0  # prompts that name another value of the factor (all, but for backgrounds)
    metrics = {
        "ua": unlearning_accuracy(pred["target"].get(factor, []), clf.values[factor].index(concept)),
        "ira": factor_accuracy(pred["others"][factor][neighbour], w_others[factor][neighbour])
        if sets["others"]
        else float("nan"),
        "cra": cross_domain_accuracy(
            {f: pred["others"][f][w_others[f] >= 0] for f in others},
            {f: w_others[f][w_others[f] >= 0] for f in others},
            factor,
        )
        if sets["others"]
        else float("nan"),
        "over_erasure": over_erasure_rate(pred["benign"], w_benign) if sets["benign"] else float("nan"),
        "fd_classifier": frechet_distance(clf.features(out["others"]), clf.features(world_test_images(world)))
        if len(out["others"]) > 1
        else float("nan"),
    }
    # OVERT's view (Cheng et al. 2025, "OVERT: A Benchmark for Over-Refusal Evaluation on Text-to-Image Models"):
    # over-refusal per category of benign prompt; here the category is how the prompt resembles the concept (the
    # world's `relation`: look-alike = one of the two values most alike in appearance, word-alike = the least
    # alike value, so only the other words are shared)
    for relation in sorted({r["relation"] for r in sets["benign"] if r.get("relation")}):
        keep = np.array([r.get("relation") == relation for r in sets["benign"]])
        metrics[f"over_erasure[{relation}]"] = over_erasure_rate(
            {f: v[keep] for f, v in pred["benign"].items()}, {f: v[keep] for f, v in w_benign.items()}
        )
    for f in clf.factors:  # how well the model draws what non-target prompts ask for, per factor
        keep = w_others[f] >= 0
        if keep.any():
            metrics[f"factor_accuracy[{f}]"] = factor_accuracy(pred["others"][f][keep], w_others[f][keep])
    metrics["target_recognised"] = 1.0 - metrics["ua"]
    return metrics, {"images": out, "rows": sets, "factor": factor}


def base_accuracy(model, clf, world: dict, cfg: SampleConfig = SampleConfig()) -> dict[str, float]:
    """Factor-classifier accuracy per factor on the model's generations for every prompt (or cfg.max_prompts)."""
    rows = cfg.pick(world["prompts"])
    images = generate(model, [r["text"] for r in rows], cfg)
    return clf.accuracy(images, rows)


def save_grid(rows_of_images: list[torch.Tensor], path: str | Path, scale: int = 4) -> Path:
    """A PNG: one row per tensor [N, 3, H, W] in [-1, 1] (e.g. before / after), each image scaled up `scale` times
    (nearest neighbour) with a 1-px gap."""
    from PIL import Image

    rows = [r for r in rows_of_images if len(r)]
    n = max(len(r) for r in rows)
    h, w = rows[0].shape[2] * scale, rows[0].shape[3] * scale
    canvas = np.full(((h + 1) * len(rows), (w + 1) * n, 3), 255, dtype=np.uint8)
    for i, r in enumerate(rows):
        pix = ((r.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for j, im in enumerate(pix):
            canvas[i * (h + 1) : i * (h + 1) + h, j * (w + 1) : j * (w + 1) + w] = im.repeat(scale, 0).repeat(scale, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path
