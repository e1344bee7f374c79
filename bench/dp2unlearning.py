"""DP2Unlearning on the built-in world: DP-SGD targets at several epsilons, each unlearned by retain-only fine-tuning,
against the oracle (exact retraining without the forget split) and NPO from the non-DP target.

Per epsilon it prints the target's training seconds, the unlearning seconds, forget quality and model utility (and
its ratio to the non-DP target's), and the unlearning cost as a share of the oracle's training seconds, all measured
in the same run. The acceptance line: at epsilon 8, forget quality >= 0.05 at utility >= 0.9 x the non-DP target's
in at most 0.6 x the oracle's wall time.

    python bench/dp2unlearning.py --out runs/dp2u                    # epsilons 8,1,inf; 300 steps per model
    python bench/dp2unlearning.py --out runs/dp2u --steps 100        # faster, every model under-trained alike
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epsilons", default="8,1,inf")
    ap.add_argument("--steps", type=int, default=300, help="steps of every target and the oracle (batch 100)")
    ap.add_argument("--unlearn-steps", type=int, default=None, help="dp2unlearning steps (default: its own)")
    ap.add_argument("--split", default="forget10")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from obliviate.benchmarks.layouts import SUITES
    from obliviate.data.schema import load_qa
    from obliviate.data.world import WorldSpec, world_texts, write_world
    from obliviate.engine.evaluate import metrics_from_rows, score_model
    from obliviate.engine.train import TrainConfig, train
    from obliviate.models.load import load_model
    from obliviate.models.tiny import build_tokenizer
    from obliviate.unlearning.dp import DPConfig, read_dp_record
    from obliviate.unlearning.methods import METHODS
    from obliviate.unlearning.run import idk_pool, unlearning_parts
    from obliviate.unlearning.world_models import train_world_models

    out = args.out
    world = out / "world"
    write_world(world, WorldSpec(seed=args.seed))
    tok = build_tokenizer(world_texts(world))
    common = dict(forget_split=args.split, steps=args.steps, seed=args.seed, tokenizer=tok)
    secs = train_world_models(world, out / "inf", only=("target", "oracle"), **common)
    target_s = {"inf": secs["target"]}
    oracle_s = secs["oracle"]
    print(f"non-DP target {target_s['inf']:.1f} s, oracle {oracle_s:.1f} s", flush=True)
    suite = SUITES.get("world")
    data = suite.eval_data(world, args.split)
    oracle_rows = score_model(load_model(str(out / "inf" / "oracle"))[0], tok, data)
    forget_path, retain_path = suite.train_paths(world, args.split)
    parts = unlearning_parts(load_qa(forget_path), load_qa(retain_path), idk_pool(None), args.seed)
    cfg = TrainConfig(seed=args.seed, checkpoint_every=0, progress=False)
    target_mu = metrics_from_rows(score_model(load_model(str(out / "inf" / "target"))[0], tok, data), oracle_rows)[
        "model_utility"
    ]

    def unlearn(start: Path, method: str, **opts) -> tuple[dict, float]:
        net, _ = load_model(str(start))
        net, res = train(net, tok, METHODS.get(method)(**opts), parts, cfg)
        return metrics_from_rows(score_model(net, tok, data), oracle_rows), res.seconds

    rows = []

    def report(name: str, eps: str, train_s: float, m: dict, un_s: float, reported) -> None:
        row = {
            "run": name,
            "epsilon_target": eps,
            "epsilon_reported": reported,
            "target_train_s": round(train_s, 1),
            "unlearn_s": round(un_s, 1),
            "unlearn_over_oracle": round(un_s / oracle_s, 3),
            "forget_quality": m["forget_quality"],
            "model_utility": m["model_utility"],
            "mu_over_target": m["model_utility"] / target_mu if target_mu else math.nan,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    opts = {} if args.unlearn_steps is None else {"steps": args.unlearn_steps}
    for eps in [e.strip() for e in args.epsilons.split(",") if e.strip()]:
        if eps != "inf":
            secs = train_world_models(world, out / f"eps{eps}", only="target", dp=DPConfig(float(eps)), **common)
            target_s[eps] = secs["target"]
        start = out / f"eps{eps}" / "target" if eps != "inf" else out / "inf" / "target"
        record = read_dp_record(start)
        m, un_s = unlearn(start, "dp2unlearning", **opts)
        report(f"dp2unlearning eps={eps}", eps, target_s[eps], m, un_s, record and record["epsilon"])
    m, un_s = unlearn(out / "inf" / "target", "npo")
    report("npo (non-DP target)", "inf", target_s["inf"], m, un_s, None)
    report("oracle (retrain)", "-", oracle_s, metrics_from_rows(oracle_rows, oracle_rows), oracle_s, None)

    print(f"\noracle (exact retraining) {oracle_s:.1f} s; non-DP target utility {target_mu:.4f}")
    head = (
        f"{'run':24s} {'eps(acct)':>9s} {'target s':>9s} {'unlearn s':>9s} {'/oracle':>8s} {'FQ':>9s} {'MU/target':>9s}"
    )
    print(head)
    for r in rows:
        acct = f"{r['epsilon_reported']:.2f}" if r["epsilon_reported"] is not None else "-"
        print(
            f"{r['run']:24s} {acct:>9s} {r['target_train_s']:>9.1f} {r['unlearn_s']:>9.1f} "
            f"{r['unlearn_over_oracle']:>8.3f} {r['forget_quality']:>9.2e} {r['mu_over_target']:>9.3f}"
        )
    (out / "dp2unlearning.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
