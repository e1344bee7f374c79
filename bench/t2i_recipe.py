"""The image world's base text-to-image model: factor accuracy of its own generations against training time.

    python bench/t2i_recipe.py --minutes 12 --every 3 --guidance 1.5,2,3 [--threads 2] [--out runs/t2i_recipe]
    python bench/t2i_recipe.py --steps 1600 --cooldown 0.4 --ema 0.995 --every-steps 800 --ddim 12,20 --guidance 3
    python bench/t2i_recipe.py --model runs/demo-diffusion/models/base --classifiers runs/demo-diffusion/classifiers \
        --ddim 10,12,15,20 --guidance 3          # score a trained model only

Trains `build_t2i` on the image world (`ImageWorldSpec()` defaults: 6 objects x 6 colours x 4 styles x 3
backgrounds, 16x16) with `train_t2i`, for `--minutes` (the step count set from a probe's step time) or a fixed
`--steps`; after every `--every` minutes (or `--every-steps` steps) it samples one image per world prompt (144) at
each DDIM step count (`--ddim`) and guidance and prints the factor classifiers' accuracy on them. The classifiers
are trained first (`--classifier-steps`: 1,000 unless told, the demo trains 600) unless `--classifiers DIR` loads
them. Prints one line per checkpoint; the model of the last checkpoint is saved under --out when given. `--model
DIR` scores that model and trains nothing. Figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=12)
    ap.add_argument("--every", type=float, default=3)
    ap.add_argument("--guidance", default="1.5,2,3")
    ap.add_argument("--ddim", default="25", help="DDIM step counts, comma-separated")
    ap.add_argument("--steps", type=int, default=None, help="a fixed step count instead of --minutes")
    ap.add_argument("--every-steps", type=int, default=None, help="with --steps: a checkpoint every N steps")
    ap.add_argument("--cooldown", type=float, default=0.0, help="train_t2i(cooldown=): the linear decay's share")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--model", type=Path, default=None, help="score this trained model; train nothing")
    ap.add_argument("--classifiers", type=Path, default=None, help="load these factor classifiers")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--channels", default="32,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--classifier-steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--freeze-text", action="store_true", help="keep the text encoder at its initialisation")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from obliviate.diffusion.classifiers import FactorClassifiers, train_factor_classifiers
    from obliviate.diffusion.evaluate import SampleConfig, base_accuracy
    from obliviate.diffusion.model import T2IConfig, build_t2i, build_word_tokenizer, load_t2i, train_t2i
    from obliviate.diffusion.world import ImageWorldSpec, build_image_world, vocabulary

    spec = ImageWorldSpec(seed=a.seed)
    world = build_image_world(spec)
    t0 = time.perf_counter()
    if a.classifiers:
        clf = FactorClassifiers.load(a.classifiers)
    else:
        clf = train_factor_classifiers(spec, steps=a.classifier_steps, seed=a.seed)
    print(f"classifiers: {time.perf_counter() - t0:.0f} s, fresh accuracy {clf.meta['fresh_accuracy']}", flush=True)
    guidances = [float(g) for g in a.guidance.split(",")]
    ddims = [int(d) for d in a.ddim.split(",")]

    def score(model, step: int, seconds: float) -> dict:
        row = {"minutes": round(seconds / 60, 2), "steps": step}
        for d in ddims:
            for g in guidances:
                acc = base_accuracy(model, clf, world, SampleConfig(steps=d, guidance=g, seed=a.seed))
                row[f"ddim{d} g{g}"] = {f: round(v, 3) for f, v in acc.items()}
        print(json.dumps(row), flush=True)
        return row

    if a.model:
        score(load_t2i(a.model), 0, 0.0)
        return
    train = [i for i, r in enumerate(world["labels"]) if r["split"] == "train"]
    images, captions = world["images"][train], [world["labels"][i]["captions"] for i in train]
    tok = build_word_tokenizer(vocabulary(world))
    model = build_t2i(
        tok, T2IConfig(size=spec.size, channels=tuple(int(c) for c in a.channels.split(","))), seed=a.seed
    )
    n_params = sum(p.numel() for p in model.unet.parameters())
    print(f"UNet {n_params / 1e6:.2f}M parameters; {len(images)} training images", flush=True)
    # the step time, measured on a throwaway copy, sets the checkpoint interval in steps
    probe = train_t2i(
        model.copy(),
        images,
        captions,
        steps=10,
        batch_size=a.batch_size,
        lr=a.lr,
        seed=a.seed,
        train_text_encoder=not a.freeze_text,
    )
    per_step = probe["seconds"] / 10
    if a.steps:
        total, every = a.steps, a.every_steps or a.steps
    else:
        every = max(1, int(a.every * 60 / per_step))
        total = max(every, int(a.minutes * 60 / per_step))
    print(f"{per_step:.2f} s per step: {total} steps, a checkpoint every {every}", flush=True)
    curve = []

    def checkpoint(step: int, seconds: float) -> None:
        curve.append(score(model, step, seconds))

    train_t2i(
        model,
        images,
        captions,
        steps=total,
        batch_size=a.batch_size,
        lr=a.lr,
        seed=a.seed,
        cooldown=a.cooldown,
        ema=a.ema,
        checkpoint_every=every,
        on_checkpoint=checkpoint,
        train_text_encoder=not a.freeze_text,
    )
    if a.out:
        model.save(a.out / "model")
        clf.save(a.out / "classifiers")
        (a.out / "curve.json").write_text(json.dumps(curve, indent=2) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
