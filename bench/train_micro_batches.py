"""Fine-tuning steps in whole batches against micro-batches within a token budget (`TrainConfig.max_batch_tokens`).

    python bench/train_micro_batches.py --pairs runs/audit/artifacts/finetune/model/generated.jsonl \
        [--model models/smollm2-135m-instruct] [--budgets 2048,1024,512] [--checkpointing] [--steps 2] [--threads 2]

`--pairs`: the `finetune` attack's self-answered pairs (`generated.jsonl`, `prompt` / `reply` records, written by
`obliviate audit ... --suite refusal --attacks finetune`), or any JSONL of such records. Without it, HarmBench-val's
behaviours (`--harmbench`, the shipped file by default) each paired with its affirmative target.

Each budget runs in its own process (peak RSS is a per-process figure): `steps` steps of `FineTune`, LoRA r=8,
batches of 16, fp32, as the attack trains. Budget 0 is whole batches; one the machine cannot hold is reported as
killed. Prints seconds for the `train` call and the process's peak RSS. Figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_pairs(args) -> list[tuple[str, str]]:
    if args.pairs:
        return [(r["prompt"], r["reply"]) for r in map(json.loads, Path(args.pairs).read_text().splitlines()) if r]
    from obliviate.refusal.public_refusal import load_sources

    return [(r["prompt"], r["answer"]) for r in load_sources([f"harmbench:{args.harmbench}"], "harmful")]


def one(args) -> None:
    import torch

    from obliviate.engine.train import FineTune, TrainConfig, train
    from obliviate.models.load import load_model

    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    cfg = TrainConfig(
        retain_batch_size=16,
        checkpoint_every=0,
        progress=False,
        lora_r=8,
        gradient_checkpointing=args.checkpointing,
        max_batch_tokens=args.one,
    )
    t = time.perf_counter()
    train(model, tok, FineTune(lr=1e-3, steps=args.steps), {"retain": load_pairs(args)}, cfg)
    print(
        json.dumps(
            {"seconds": time.perf_counter() - t, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/smollm2-135m-instruct")
    ap.add_argument("--pairs", default=None)
    ap.add_argument("--harmbench", default=str(SHARED / "harmbench" / "harmbench_behaviors_text_val.csv"))
    ap.add_argument("--budgets", default="2048,1024,512", help="comma-separated; 0 = whole batches")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        return one(args)
    print(
        f"{args.steps} FineTune steps, LoRA r=8, batches of 16, fp32, {args.threads} threads, "
        f"checkpointing {'on' if args.checkpointing else 'off'}"
    )
    for budget in (int(b) for b in args.budgets.split(",")):
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(budget),
            "--model",
            args.model,
            "--harmbench",
            args.harmbench,
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
        ]
        cmd += ["--pairs", args.pairs] if args.pairs else []
        cmd += ["--checkpointing"] if args.checkpointing else []
        run = subprocess.run(cmd, capture_output=True, text=True)
        label = f"{budget} tokens" if budget else "whole batches"
        if run.returncode:
            print(
                f"{label:>16}: exit {run.returncode} ({'killed' if run.returncode < 0 else run.stderr.strip()[-200:]})"
            )
            continue
        fig = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{label:>16}: {fig['seconds']:6.1f} s   peak RSS {fig['peak_gb']:5.1f} GB", flush=True)


if __name__ == "__main__":
    main()
