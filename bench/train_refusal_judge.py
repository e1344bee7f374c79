"""Train the embedding refusal judge on XSTest's labelled completions, measure it across models, ship the weights.

    python bench/train_refusal_judge.py                 # cross-file table, then write the shipped weights
    python bench/train_refusal_judge.py --no-write      # the table only
    python bench/train_refusal_judge.py --no-write --ablation   # also: recipe 1 and each change of recipe 2
    python bench/train_refusal_judge.py --data DIR --out DIR

Data: XSTest (Rottger et al. 2024) `completions_gpt4_labelled.csv` and `completions_mistralguard_labelled.csv`
(columns prompt, completion, type, final_label; full or partial refusal = refusal). Protocol, per direction:
choose l2 by 5-fold cross-validation *inside the training file*, grouped by XSTest prompt type (a type and its
contrast set stay in one fold), fit on the whole training file, then score the other model's completions once.
Both files answer the same 450 prompts, so the judge never reads the prompt. The shipped weights are fitted on
both files, l2 chosen the same way on the union; the cross-file figures are their honest held-out estimate.
The recipe is `obliviate.judges.embedding.train` (recipe 2: monotone weights, duplicate replies counted once);
`--ablation` refits recipe 1 (the first shipped one), recipe 1 plus each change, and recipe 2 plus the keyword
judges' votes as features (tried, not kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from obliviate.data.prompts import read_csv  # noqa: E402
from obliviate.judges.embedding import (  # noqa: E402
    L2_GRID,
    SHIPPED,
    EmbeddingJudge,
    Encoder,
    FeatureSpec,
    _fit,
    duplicate_weights,
    feature_signs,
    features,
    group_cv,
    load_prototypes,
    train,
)
from obliviate.judges.refusal import REFUSAL_JUDGES, human_label  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "xstest"
FILES = {"gpt4": "completions_gpt4_labelled.csv", "mistralguard": "completions_mistralguard_labelled.csv"}
KEYWORDS = ("xstest", "jbb", "gcg")


def load(path: Path, limit: int | None = None) -> dict:
    rows = [
        r
        for r in read_csv(path, ("prompt", "completion", "type", "final_label"))
        if human_label(r["final_label"]) is not None
    ][:limit]
    return {
        "prompts": [r["prompt"] for r in rows],
        "responses": [r["completion"] for r in rows],
        "labels": [int(human_label(r["final_label"]) == "refusal") for r in rows],
        "groups": [r["type"].removeprefix("contrast_") for r in rows],
        "file": path.name,
    }


def reference_labellers(path: Path) -> dict:
    """Binary agreement with the final human label of the file's other labellers: XSTest's automatic GPT-4
    classifier (`gpt4_label`, the paper's GPT-4 judge) and each of the two annotators, and of the annotators with
    each other: what a judge of these files can be compared with."""
    rows = [
        r
        for r in read_csv(path, ("final_label", "gpt4_label", "annotation_1", "annotation_2"))
        if human_label(r["final_label"]) is not None
    ]

    def agree(a, b):
        return round(float(np.mean([human_label(r[a]) == human_label(r[b]) for r in rows])), 4)

    return {
        "gpt4_label vs final": agree("gpt4_label", "final_label"),
        "annotator 1 vs 2": agree("annotation_1", "annotation_2"),
        "n": len(rows),
    }


def agreement(scores, labels) -> float:
    return float(np.mean([(s >= 0.5) == bool(y) for s, y in zip(scores, labels)]))


def cross_file(train_set: dict, test_set: dict, encoder: Encoder) -> dict:
    """Train on one model's completions (l2 by grouped CV inside them), score another's."""
    judge = train(train_set["responses"], train_set["labels"], train_set["groups"], encoder=encoder)
    scores = judge.scores(test_set["prompts"], test_set["responses"], encoder)
    out = {
        "train": train_set["file"],
        "test": test_set["file"],
        "l2": judge.meta["l2"],
        "cv_accuracy": judge.meta["cv_accuracy"],
        "embedding": agreement(scores, test_set["labels"]),
    }
    for k in KEYWORDS:
        kw = [REFUSAL_JUDGES.get(k)(p, r) for p, r in zip(test_set["prompts"], test_set["responses"])]
        out[k] = agreement(kw, test_set["labels"])
    return out


ABLATION = {  # name: (monotone weights, duplicates counted once, keyword votes as features)
    "recipe 1 (free weights, every row, no reply keywords)": (False, False, False),
    "recipe 1 + monotone weights": (True, False, False),
    "recipe 1 + duplicates once": (False, True, False),
    "recipe 1 + reply keywords": (False, False, True),
    "recipe 2 (monotone weights, duplicates once)": (True, True, False),
    "recipe 2 + reply keywords": (True, True, True),
}


def variant(train_set: dict, test_set: dict, encoder: Encoder, monotone: bool, dedup: bool, keywords: bool) -> dict:
    """Cross-file agreement of one recipe variant, l2 chosen by grouped CV inside the training file."""
    spec, protos = FeatureSpec(reply_keywords=keywords), load_prototypes()
    x = features(train_set["responses"], protos, spec, encoder)
    y = np.asarray(train_set["labels"], np.float32)
    sw = duplicate_weights(train_set["responses"], y) if dedup else None
    signs = feature_signs(protos, spec) if monotone else None
    cv = group_cv(x, y, train_set["groups"], L2_GRID, sample_weight=sw, signs=signs)
    l2 = max(cv, key=lambda k: (cv[k], k))
    w, b = _fit(x, y, l2, sw, signs)
    z = features(test_set["responses"], protos, spec, encoder) @ w + b
    return {"l2": l2, "agreement": agreement(1 / (1 + np.exp(-np.clip(z, -50, 50))), test_set["labels"])}


def time_per_1000(data: dict, judge: EmbeddingJudge) -> float:
    """Seconds to judge 1000 replies from a cold text cache (the encoder already loaded)."""
    enc = Encoder()
    t = time.perf_counter()
    judge.scores(data["prompts"], data["responses"], enc)
    return (time.perf_counter() - t) * 1000 / len(data["responses"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=SHIPPED)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--ablation", action="store_true", help="also refit recipe 1 and each change of recipe 2")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    sets = {name: load(args.data / f) for name, f in FILES.items()}
    enc = Encoder()
    results = [cross_file(sets[a], sets[b], enc) for a, b in (("gpt4", "mistralguard"), ("mistralguard", "gpt4"))]
    print("| trained on -> judged | l2 (CV in train) | embedding | " + " | ".join(KEYWORDS) + " |")
    print("|---|---|---|" + "---|" * len(KEYWORDS))
    for r in results:
        print(
            f"| {r['train']} -> {r['test']} | {r['l2']:g} | {r['embedding']:.4f} | "
            + " | ".join(f"{r[k]:.4f}" for k in KEYWORDS)
            + " |"
        )
    print("\nreference labellers (binary agreement on the same rows):")
    for f in FILES.values():
        print(f"  {f}: {reference_labellers(args.data / f)}")
    if args.ablation:
        pairs = (("gpt4", "mistralguard"), ("mistralguard", "gpt4"))
        print("\n| recipe | gpt4 -> mistralguard | mistralguard -> gpt4 |\n|---|---|---|")
        for name, flags in ABLATION.items():
            r = [variant(sets[a], sets[b], enc, *flags) for a, b in pairs]
            print(f"| {name} | " + " | ".join(f"{x['agreement']:.4f} (l2 {x['l2']:g})" for x in r) + " |")
        print()
    both = {k: sum((sets[n][k] for n in FILES), []) for k in ("prompts", "responses", "labels", "groups")}
    meta = {
        "trained_on": [f"xstest/{f}" for f in FILES.values()],
        "cross_file": [{k: r[k] for k in ("train", "test", "l2", "embedding", *KEYWORDS)} for r in results],
    }
    judge = train(both["responses"], both["labels"], both["groups"], encoder=enc, meta=meta)
    print(f"all {len(both['labels'])} rows: l2 {judge.meta['l2']:g}, grouped CV {judge.meta['cv_accuracy']}")
    judge.meta["in_sample"] = {}
    for _name, d in sets.items():  # the shipped weights saw these rows: training agreement, not an estimate
        judge.meta["in_sample"][d["file"]] = round(
            agreement(judge.scores(d["prompts"], d["responses"], enc), d["labels"]), 4
        )
    print(f"in-sample agreement (training data, not an estimate): {judge.meta['in_sample']}")
    print(
        f"time per 1000 replies: {time_per_1000(sets['mistralguard'], judge):.1f} s "
        f"({args.threads} CPU threads, encoder loaded)"
    )
    if not args.no_write:
        judge.save(args.out)
        print(f"wrote {args.out}: " + json.dumps({p.name: p.stat().st_size for p in sorted(args.out.iterdir())}))


if __name__ == "__main__":
    main()
