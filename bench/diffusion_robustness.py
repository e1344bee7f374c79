"""The robustness order of concept erasers under UnlearnDiffAtk, over base models of several seeds.

    python bench/diffusion_robustness.py --demo runs/demo-diffusion --seeds 0,1,2 --out runs/robust \
        [--erasers esd_x,uce,rece,advunlearn] [--prompts 24] [--concept star] [--threads 1] \
        [--option advunlearn.attack_steps=10 ...] [--label NAME]

The image world and its classifiers are the demo's (`--demo`, a `demo --suite diffusion` output); the base model of
seed 0 is the demo's, and the other seeds' are trained with the demo's recipe and step count (saved under
OUT/base-seedS, reused when present; `--fresh-base` trains seed 0's too, `--base-only` stops at the bases'
accuracies: how far the thread count moves them). Each eraser runs as the demo runs it (`demo_erase`: its steps, DDIM steps and
per-eraser options, with `--option ERASER.KEY=VALUE` over them), then UA / IRA / CRA on `--prompts` prompts per set
and UnlearnDiffAtk (its reference defaults) on `--prompts` target prompts: pre-ASR and ASR. Prints one line per
(seed, eraser), then mean and standard deviation over the seeds; writes OUT/LABEL.json. Figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path


def base_for(seed: int, demo: Path, out: Path, size, world, log, fresh: bool = False):
    from obliviate.diffusion.model import T2IConfig, build_t2i, build_word_tokenizer, load_t2i, train_t2i
    from obliviate.diffusion.world import vocabulary

    if seed == 0 and (demo / "models" / "base").is_dir() and not fresh:
        return load_t2i(demo / "models" / "base")
    d = out / f"base-seed{seed}"
    if d.is_dir():
        return load_t2i(d)
    train = [i for i, r in enumerate(world["labels"]) if r["split"] == "train"]
    tok = build_word_tokenizer(vocabulary(world))
    base = build_t2i(tok, T2IConfig(size=world["images"].shape[1], channels=size.channels), seed=seed)
    captions = [world["labels"][i]["captions"] for i in train]
    fit = train_t2i(base, world["images"][train], captions, **size.train_recipe(seed))
    log(f"base seed {seed}: {fit['steps']} steps in {fit['seconds']:.0f} s")
    base.save(d)
    return base


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--erasers", default="esd_x,uce,rece,advunlearn")
    ap.add_argument("--concept", default="star")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--option", action="append", default=[], help="ERASER.KEY=VALUE over the demo's options")
    ap.add_argument("--label", default="robustness")
    ap.add_argument("--fresh-base", action="store_true", help="train seed 0's base too (the demo's is not reused)")
    ap.add_argument("--base-only", action="store_true", help="train / load the bases, print their accuracy, stop")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from obliviate.core.options import cast_options
    from obliviate.demos.diffusion import FULL, demo_erase
    from obliviate.diffusion.audit import DiffusionAuditConfig, audit_concept
    from obliviate.diffusion.classifiers import FactorClassifiers
    from obliviate.diffusion.erasers import ERASERS, load_all
    from obliviate.diffusion.evaluate import base_accuracy, evaluate_concept
    from obliviate.diffusion.world import load_image_world

    load_all()
    a.out.mkdir(parents=True, exist_ok=True)
    size = FULL
    world = load_image_world(a.demo / "world")
    clf = FactorClassifiers.load(a.demo / "classifiers")
    sample = replace(size.sample, max_prompts=a.prompts)
    extra: dict[str, dict] = {}
    for o in a.option:
        key, _, value = o.partition("=")
        eraser, _, k = key.partition(".")
        extra.setdefault(eraser, {}).update(cast_options(ERASERS.get(eraser), {k: value}, f"eraser {eraser}"))
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        base = base_for(seed, a.demo, a.out, size, world, print, a.fresh_base)
        acc = base_accuracy(base, clf, world, replace(size.sample, max_prompts=None))
        if a.base_only:
            print(f"seed {seed} base ({a.threads} threads): accuracy {acc}", flush=True)
            continue
        m0, _ = evaluate_concept(base, clf, world, a.concept, sample)
        print(f"seed {seed} base: accuracy {acc}; IRA {m0['ira']:.3f} CRA {m0['cra']:.3f}", flush=True)
        for name in a.erasers.split(","):
            opts = dict(size.eraser_options.get(name, {})) | extra.get(name, {})
            t0 = time.perf_counter()
            seeded = {"seed": seed} if "seed" in ERASERS.get(name).__dataclass_fields__ else {}
            edited = demo_erase(
                name, base, world, a.concept, size.eraser_steps, seed, size.eraser_ddim_steps, opts | seeded
            )
            secs = time.perf_counter() - t0
            m, _ = evaluate_concept(edited, clf, world, a.concept, sample)
            cfg = DiffusionAuditConfig(prompts=a.prompts, sample=sample)
            aud = audit_concept(edited, base, clf, world, a.concept, ["unlearndiffatk"], cfg)
            row = {
                "seed": seed,
                "eraser": name,
                "options": opts,
                "ua": m["ua"],
                "ira": m["ira"],
                "cra": m["cra"],
                "base_ira": m0["ira"],
                "base_cra": m0["cra"],
                "pre_asr": aud["pre_asr"],
                "asr": aud["attacks"]["unlearndiffatk"]["asr"],
                "erase_seconds": round(secs, 1),
                "attack_seconds": aud["attacks"]["unlearndiffatk"]["seconds"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            (a.out / f"{a.label}.json").write_text(json.dumps(rows, indent=1))
    if a.base_only:  # no eraser ran: the bases' lines above are the figures
        return
    print("\n| eraser | UA | IRA / base | CRA / base | pre-ASR | ASR after UnlearnDiffAtk |")
    print("|---|---|---|---|---|---|")

    def ms(vals):
        return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"

    for name in a.erasers.split(","):
        r = [x for x in rows if x["eraser"] == name]
        print(
            f"| {name} | {ms([x['ua'] for x in r])} | {ms([x['ira'] / x['base_ira'] for x in r])} | "
            f"{ms([x['cra'] / x['base_cra'] for x in r])} | {ms([x['pre_asr'] for x in r])} | {ms([x['asr'] for x in r])} |"
        )


if __name__ == "__main__":
    main()
