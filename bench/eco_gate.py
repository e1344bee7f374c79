"""Which prompt classifier should gate ECO / GUARD? Character n-gram TF-IDF + logistic regression against the
MiniLM sentence encoder (the embedding judge's) + logistic regression, on the built-in world's forget10 versus
retain90 questions, 5-fold stratified cross-validation grouped by person (a held-out fold holds people neither
classifier saw, the harder case), and ungrouped (the case ECO meets: the gate is fitted on the forget questions
themselves). Prints accuracy and the share of retain questions flagged; it is not a test.

    python bench/eco_gate.py [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    from obliviate.data.schema import load_qa
    from obliviate.data.world import WorldSpec, write_world
    from obliviate.guards.text_classifier import TfidfLogistic
    from obliviate.judges.embedding import Encoder

    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "w"
        write_world(world, WorldSpec(seed=a.seed))
        forget, retain = load_qa(world / "forget10.jsonl"), load_qa(world / "retain90.jsonl")
    items = [it for it in forget + retain if it.subject]
    texts = [it.question for it in items]
    y = np.array([int(i < len(forget)) for i in range(len(items))])
    groups = [it.subject for it in items]
    t0 = time.perf_counter()
    enc = Encoder()
    X_emb = enc.encode(texts)
    t_enc = time.perf_counter() - t0
    for name, splitter, args in (
        ("grouped by person", StratifiedGroupKFold(5, shuffle=True, random_state=a.seed), (texts, y, groups)),
        ("ungrouped", StratifiedKFold(5, shuffle=True, random_state=a.seed), (texts, y)),
    ):
        scores = {"tfidf": [], "minilm": []}
        flags = {"tfidf": [], "minilm": []}
        for tr, te in splitter.split(*args):
            tf = TfidfLogistic().fit([texts[i] for i in tr], y[tr].tolist())
            p = tf.proba([texts[i] for i in te]) >= 0.5
            scores["tfidf"].append(float((p == y[te]).mean()))
            flags["tfidf"].append(float(p[y[te] == 0].mean()))
            lr = LogisticRegression(C=10.0, max_iter=5000, class_weight="balanced").fit(X_emb[tr], y[tr])
            p = lr.predict(X_emb[te]) == 1
            scores["minilm"].append(float((p == y[te]).mean()))
            flags["minilm"].append(float(p[y[te] == 0].mean()))
        print(
            f"{name}: "
            + " | ".join(
                f"{k} accuracy {np.mean(v):.3f} (retain flagged {np.mean(flags[k]):.3f})" for k, v in scores.items()
            )
        )
    print(f"{len(items)} questions ({int(y.sum())} forget); MiniLM encoding took {t_enc:.1f} s")


if __name__ == "__main__":
    main()
