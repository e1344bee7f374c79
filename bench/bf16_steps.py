"""fp32 against bf16-autocast training steps, on this machine.

    python bench/bf16_steps.py [--steps 20] [--repeats 3] [--threads 1] [--models lm,t2i,real]

lm:   the world demo's target (tiny Llama, ~0.6M parameters, batch 100 of world QA): `obliviate.engine.train.train` with
      `TrainConfig.bf16` off and on.
t2i:  the image world's base model (UNet 0.98M + CLIP text encoder, batch 64 at 16x16): `train_t2i(bf16=...)`.
real: a pretrained chat model (`--model`, default models/smollm2-135m-instruct), LoRA r=16, batch 16 of world QA in
      its chat template, as the real-model demo trains; the line also says what `train.bf16_pays` decides here.

Each repeat runs both precisions in turn on fresh copies of the same model (A/B interleaved); the figure is the
median seconds per step, the first step of each run left out (allocation). bf16 autocast runs the matmuls and
convolutions in bf16 (AMX on recent Xeons); weights, gradients and optimiser state stay fp32. Figures, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def lm_runner(steps: int):
    from obliviate.data.schema import load_qa
    from obliviate.data.world import world_texts, write_world
    from obliviate.engine.train import FineTune, TrainConfig, train
    from obliviate.models.tiny import build_model, build_tokenizer
    from obliviate.unlearning.run import qa_pairs

    tmp = tempfile.mkdtemp()
    write_world(tmp)
    tok = build_tokenizer(world_texts(Path(tmp)))
    pairs = qa_pairs(load_qa(Path(tmp) / "train.jsonl"))

    def run(bf16: bool) -> list[float]:
        stamps = []
        cfg = TrainConfig(retain_batch_size=100, checkpoint_every=0, progress=False, bf16=bf16)
        train(
            build_model(tok, seed=0),
            tok,
            FineTune(lr=3e-3, steps=steps + 1),
            {"retain": pairs},
            cfg,
            on_step=lambda *_: stamps.append(time.perf_counter()),
        )
        return [b - a for a, b in zip(stamps, stamps[1:])]

    return run


def real_runner(steps: int, model_dir: str):
    from obliviate.data.schema import load_qa
    from obliviate.data.world import write_world
    from obliviate.engine.train import FineTune, TrainConfig, train
    from obliviate.models.load import load_model
    from obliviate.unlearning.run import qa_pairs

    tmp = tempfile.mkdtemp()
    write_world(tmp)
    pairs = qa_pairs(load_qa(Path(tmp) / "train.jsonl"))

    def run(bf16: bool) -> list[float]:
        stamps = []
        model, tok = load_model(model_dir)
        cfg = TrainConfig(retain_batch_size=16, checkpoint_every=0, progress=False, lora_r=16, bf16=bf16)
        train(
            model,
            tok,
            FineTune(lr=1e-3, steps=steps + 1),
            {"retain": pairs},
            cfg,
            on_step=lambda *_: stamps.append(time.perf_counter()),
        )
        return [b - a for a, b in zip(stamps, stamps[1:])]

    return run


def t2i_runner(steps: int):
    from obliviate.diffusion.model import build_t2i, build_word_tokenizer, train_t2i
    from obliviate.diffusion.world import ImageWorldSpec, build_image_world, vocabulary

    world = build_image_world(ImageWorldSpec(seed=0))
    train = [i for i, r in enumerate(world["labels"]) if r["split"] == "train"]
    images, captions = world["images"][train], [world["labels"][i]["captions"] for i in train]
    model = build_t2i(build_word_tokenizer(vocabulary(world)), seed=0)

    def run(bf16: bool) -> list[float]:
        first = train_t2i(model.copy(), images, captions, steps=1, bf16=bf16)["seconds"]
        total = train_t2i(model.copy(), images, captions, steps=steps + 1, bf16=bf16)["seconds"]
        return [(total - first) / steps] * steps  # per-step wall time without the first step's allocation

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="lm,t2i")
    ap.add_argument("--model", default="models/smollm2-135m-instruct", help="the chat model of `real`")
    a = ap.parse_args()

    import torch

    from obliviate.engine.numerics import bf16_pays

    torch.set_num_threads(a.threads)
    print(
        f"torch {torch.__version__}, {a.threads} thread(s), {a.steps} timed steps x {a.repeats} repeats; "
        f"bf16_pays() here: {bf16_pays()}"
    )
    for name in a.models.split(","):
        run = {"lm": lm_runner, "t2i": t2i_runner, "real": lambda n: real_runner(n, a.model)}[name](a.steps)
        times = {False: [], True: []}
        for _ in range(a.repeats):
            for bf16 in (False, True):
                times[bf16].append(statistics.median(run(bf16)))
        fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
        print(
            f"{name:4s} fp32 {fp32 * 1000:7.1f} ms/step  bf16 {bf16 * 1000:7.1f} ms/step  fp32/bf16 "
            f"{fp32 / bf16:.2f}x  (per repeat: {', '.join(f'{x / y:.2f}' for x, y in zip(times[False], times[True]))})",
            flush=True,
        )


if __name__ == "__main__":
    main()
