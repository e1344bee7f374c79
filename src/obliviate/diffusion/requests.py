"""Several concepts, and erasure requests over time.

- `erase_many(eraser, model, concepts)`: several concepts in one run. An eraser whose paper defines a joint edit
  for many concepts overrides `Eraser.erase_many` (UCE: one closed form with every concept's erase terms, as its
  reference code's `edit_model` takes lists); the others erase them one after another (`Eraser.erase_many`'s
  default), as ESD's and the other trained erasers' reference code would be run for a list.
- `sequential(...)`: k requests applied one after another, each on the model the previous one left, and after each
  the model scored as UnlearnCanvas scores sequential unlearning (Zhang et al. 2024, Sec. 5, "sequential
  unlearning"): the UA of every concept erased so far, and the retain accuracies on prompts that name none of
  them: IRA on the factors the requests erased from, CRA on the others.
"""

from __future__ import annotations

import time

import numpy as np

from obliviate.core.errors import UsageError


def check_concepts(concepts: list[str]) -> list[str]:
    """At least one concept, none empty, none twice (UsageError naming the repeated one)."""
    if not concepts:
        raise UsageError("give at least one --concept")
    seen = set()
    for c in concepts:
        if not c.strip():
            raise UsageError("--concept must not be empty")
        if c in seen:
            raise UsageError(f"--concept {c!r} is given twice")
        seen.add(c)
    return concepts


def score_erased(model, clf, world: dict, erased: list[str], sample, requested: list[str] | None = None) -> dict:
    """{"ua[c]" per erased concept c, "ua" (their mean), "ira", "cra"}: UA on each concept's target prompts;
    IRA / CRA on the world prompts that name none of the `requested` concepts (default: the erased ones; a
    sequential run passes every request, so that each row is scored on the same prompts), on the requested
    concepts' factors / on the other factors (pooled accuracy, as UnlearnCanvas pools them). `sample.max_prompts`
    caps each prompt set."""
    from obliviate.diffusion.evaluate import generate
    from obliviate.diffusion.world import concept_splits, factor_of

    requested = list(requested or erased)
    factors = {c: factor_of(world, c) for c in requested}
    targets = {c: sample.pick(concept_splits(world, factors[c], c)["target"]) for c in erased}
    kept = sample.pick([p for p in world["prompts"] if not any(p[factors[c]] == c for c in requested)])
    texts = [r["text"] for c in erased for r in targets[c]] + [r["text"] for r in kept]
    images = generate(model, texts, sample)
    out, at = {}, 0
    for c in erased:
        pred = clf.predict(images[at : at + len(targets[c])])[factors[c]].numpy()
        out[f"ua[{c}]"] = float((pred != clf.values[factors[c]].index(c)).mean())
        at += len(targets[c])
    pred = {f: v.numpy() for f, v in clf.predict(images[at:]).items()} if kept else {}
    touched = set(factors.values())

    def pooled(fs) -> float:
        hits = [
            pred[f][i] == clf.values[f].index(r[f])
            for f in fs
            for i, r in enumerate(kept)
            if r.get(f) is not None and f in pred
        ]
        return float(np.mean(hits)) if hits else float("nan")

    out["ua"] = float(np.mean([out[f"ua[{c}]"] for c in erased]))
    out["ira"] = pooled([f for f in clf.factors if f in touched])
    out["cra"] = pooled([f for f in clf.factors if f not in touched])
    return out


def sequential(eraser, model, concepts: list[str], clf, world: dict, sample, *, guide="", preserve=(), log=print):
    """Apply `eraser` to each concept in turn, scoring after each request (`score_erased`). Returns (the final
    model, rows [{"request": k, "concept", "seconds", "ua[c]"..., "ua", "ira", "cra"}], with row 0 the model
    before any request)."""
    rows = [{"request": 0, "concept": None, "seconds": 0.0, **score_erased(model, clf, world, concepts, sample)}]
    current = model
    for k, c in enumerate(concepts, 1):
        t0 = time.perf_counter()
        current = eraser.erase(current, c, guide=guide, preserve=tuple(preserve))
        secs = time.perf_counter() - t0
        rows.append(
            {"request": k, "concept": c, "seconds": round(secs, 1)}
            | score_erased(current, clf, world, concepts[:k], sample, concepts)
        )
        log(
            f"request {k} ({c}, {secs:.0f} s): "
            + " ".join(f"UA[{x}] {rows[-1][f'ua[{x}]']:.2f}" for x in concepts[:k])
            + f" IRA {rows[-1]['ira']:.2f} CRA {rows[-1]['cra']:.2f}"
        )
    return current, rows


def requests_table(rows: list[dict], concepts: list[str]) -> str:
    """A markdown table: one row per request, a UA column per concept (blank before it is requested)."""
    head = ["request", "seconds", *[f"UA[{c}]" for c in concepts], "IRA", "CRA"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        name = "before" if not r["request"] else f"{r['request']}: {r['concept']}"
        uas = [
            f"{r[f'ua[{c}]']:.3f}" if f"ua[{c}]" in r and (not r["request"] or concepts.index(c) < r["request"]) else ""
            for c in concepts
        ]
        lines.append(
            "| " + " | ".join([name, f"{r['seconds']:.1f}", *uas, f"{r['ira']:.3f}", f"{r['cra']:.3f}"]) + " |"
        )
    return "\n".join(lines)
