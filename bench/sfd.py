"""Score Forgetting Distillation on the demo's base model: its erasure figures and its one-step sampling speed.

    python bench/sfd.py --demo runs/demo-diffusion [--steps 300,600] [--concept star] [--threads 1]
        [--option KEY=VALUE ...]

For each step count: SFD (guide: the concept's nearest look-alike; prompts: the world's, text only, as the demo
passes them) from the demo's base model, then UA / IRA / CRA / over-erasure on 24 prompts per set, as the demo
scores. Then the sampling time of the world's 144 prompts: the one-step generator against the base model's DDIM
(20 steps at guidance 3, the demo's), median of 3 runs each, and their ratio. Figures, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", type=Path, required=True)
    ap.add_argument("--steps", default="300")
    ap.add_argument("--concept", default="star")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--option", action="append", default=[])
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from obliviate.core.options import cast_options
    from obliviate.demos.diffusion import FULL, demo_erase
    from obliviate.diffusion.classifiers import FactorClassifiers
    from obliviate.diffusion.erasers import ERASERS, load_all
    from obliviate.diffusion.evaluate import evaluate_concept
    from obliviate.diffusion.model import load_t2i
    from obliviate.diffusion.world import load_image_world

    load_all()
    world = load_image_world(a.demo / "world")
    clf = FactorClassifiers.load(a.demo / "classifiers")
    base = load_t2i(a.demo / "models" / "base")
    sample = FULL.sample
    opts = cast_options(ERASERS.get("sfd"), dict(o.split("=", 1) for o in a.option), "eraser sfd")
    m0, _ = evaluate_concept(base, clf, world, a.concept, sample)
    print(f"base: UA {m0['ua']:.3f} IRA {m0['ira']:.3f} CRA {m0['cra']:.3f} over-erasure {m0['over_erasure']:.3f}")
    gen = None
    for steps in [int(s) for s in a.steps.split(",")]:
        t0 = time.perf_counter()
        gen = demo_erase("sfd", base, world, a.concept, steps, options=opts)
        secs = time.perf_counter() - t0
        m, _ = evaluate_concept(gen, clf, world, a.concept, sample)
        print(
            f"sfd {steps} steps ({secs:.0f} s): UA {m['ua']:.3f} IRA {m['ira']:.3f} CRA {m['cra']:.3f} "
            f"over-erasure {m['over_erasure']:.3f} factor accuracy "
            + ", ".join(f"{k[16:-1]} {v:.3f}" for k, v in m.items() if k.startswith("factor_accuracy")),
            flush=True,
        )
    prompts = [r["text"] for r in world["prompts"]]

    def timed(model, cfg) -> float:
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            model.sample(prompts, steps=cfg.steps, guidance=cfg.guidance, seed=cfg.seed)
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs)

    ddim, one = timed(base, sample), timed(gen, replace(sample))
    print(
        f"sampling {len(prompts)} prompts: DDIM {sample.steps} steps at guidance {sample.guidance} {ddim:.2f} s, "
        f"one step {one:.3f} s: {ddim / one:.1f}x faster"
    )


if __name__ == "__main__":
    main()
