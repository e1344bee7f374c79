"""How well DMM's attribution predicts the retrained oracle's margins on the built-in world (Datamodel Matching docs).

    obliviate world --out DIR/world && obliviate finetune --data DIR/world --out DIR/models
    python bench/dmm_attribution.py --world DIR/world --models DIR/models [--forget-split forget10]

Prints, for the forget and retain items of the split, the Pearson / Spearman correlation between each predictor's
item margins (the mean answer-token margin) and the oracle's, their mean squared errors and the mean forget margin:
no change (the target's own margins), TRAK's Phi^T Phi kernel, the empirical-Fisher kernel at sketch widths 4096
and 16384 and two dampings (`obliviate.unlearning.attribution.removal_effect`), and DMM's token-level predictor
(`predict_oracle_token_margins`, the default options) with its seconds. Figures, not a test.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import numpy as np
    import torch
    from scipy.stats import pearsonr, spearmanr

    from obliviate.benchmarks.layouts import SUITES
    from obliviate.data.schema import load_qa
    from obliviate.engine.train import encode_parts
    from obliviate.metrics.margins import token_margins_torch
    from obliviate.models.encode import collate, token_logps
    from obliviate.models.load import load_model
    from obliviate.unlearning import attribution as A
    from obliviate.unlearning.run import qa_pairs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--forget-split", default="forget10")
    a = p.parse_args()
    torch.set_num_threads(1)
    forget_path, retain_path = SUITES.get("world").train_paths(a.world, a.forget_split)
    forget, retain = load_qa(forget_path), load_qa(retain_path)
    target, tok = load_model(f"{a.models}/target")
    items = encode_parts(tok, {"all": qa_pairs(forget) + qa_pairs(retain)}, 512)["all"]
    nf, pad = len(forget), tok.pad_token_id
    oracle_tok = A.token_margin_targets(load_model(f"{a.models}/oracle")[0], items, pad)
    oracle = np.array([float(m.mean()) for m in oracle_tok])

    def row(name, pred):
        pred = np.asarray(pred, dtype=float)
        cells = []
        for sl in (slice(0, nf), slice(nf, None)):
            cells.append(f"{pearsonr(pred[sl], oracle[sl])[0]:.2f} / {spearmanr(pred[sl], oracle[sl])[0]:.2f}")
        for sl in (slice(0, nf), slice(nf, None)):
            cells.append(f"{((pred[sl] - oracle[sl]) ** 2).mean():.3f}")
        cells.append(f"{pred[:nf].mean():.2f} (oracle {oracle[:nf].mean():.2f})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)

    print("| predictor | forget r / rho | retain r / rho | forget MSE | retain MSE | forget mean |")
    print("|---|---|---|---|---|---|")
    params = [q for q in target.parameters() if q.requires_grad]
    sketch = A.CountSketch(sum(q.numel() for q in params), 16384, 0)
    G, Phi, own = [], [], []
    for item in items:  # loss and margin gradients of every item, sketched
        logp, mask, _ = token_logps(target, collate([item], pad))
        margin = (token_margins_torch(logp) * mask).sum() / mask.sum()
        for out, f in ((G, -(logp * mask).sum()), (Phi, margin)):
            grads = torch.autograd.grad(f, params, retain_graph=True)
            out.append(sketch(torch.cat([g.reshape(-1) for g in grads])))
        own.append(float(margin.detach()))
    G, Phi, own = torch.stack(G), torch.stack(Phi), np.array(own)
    row("no change (the target's own margins)", own)
    F = list(range(nf))
    row("TRAK kernel Phi^T Phi, k = 16384, damping 1e-3", own + A.removal_effect(G, Phi, F, 1e-3, "trak").numpy())
    for k in (4096, 16384):
        fold = torch.arange(16384) % k  # a CountSketch of width k: the width-16384 buckets folded modulo k
        Gk, Pk = (torch.zeros(len(items), k).index_add_(1, fold, x) for x in (G, Phi))
        for damping in (1e-3, 1e-2):
            row(f"Fisher G^T G, k = {k}, damping {damping:g}", own + A.removal_effect(Gk, Pk, F, damping).numpy())
    t0 = time.perf_counter()
    _, predicted = A.predict_oracle_token_margins(target, items, F, pad)
    seconds = time.perf_counter() - t0
    row("DMM token-level (defaults)", [float(m.mean()) for m in predicted])
    print(f"\nDMM's precomputation: {seconds:.1f} s for {len(items)} items")


if __name__ == "__main__":
    main()
