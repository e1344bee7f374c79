"""Step time and peak memory of NPO relative to GradAscent (and NPO+retain relative to GradDiff), same batches.

NPO needs reference log-probs; obliviate computes them once before training instead of keeping a second
model, so an NPO step should cost what a GA step costs. This prints both ratios, measured in the same run.

Each measurement runs in its own subprocess (clean allocator state), GA and NPO interleaved, `--repeats`
times; medians are reported. Memory on CPU is the peak RSS during the training steps (VmHWM after resetting
it through /proc/self/clear_refs) minus the RSS before them; on CUDA it is torch's max_memory_allocated.

    python bench/step_cost.py                    # tiny Llama, hidden 256 x 4 layers, 30 steps, 3 repeats
    python bench/step_cost.py --model DIR        # any HF causal LM directory
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PAIRS = [("grad_ascent", "npo", {"retain_weight": 0.0}), ("grad_diff", "npo", {})]


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def worker(args) -> None:
    import torch

    from obliviate.data.schema import load_qa
    from obliviate.data.world import world_texts
    from obliviate.engine.train import TrainConfig, train
    from obliviate.models.load import load_model
    from obliviate.models.tiny import TinyModelConfig, build_model, build_tokenizer
    from obliviate.unlearning.methods import METHODS
    from obliviate.unlearning.run import unlearning_parts

    torch.set_num_threads(args.threads)
    world = Path(args.world)
    if args.model:
        model, tok = load_model(args.model, device="cuda" if torch.cuda.is_available() else "cpu")
    else:
        tok = build_tokenizer(world_texts(world))
        model = build_model(
            tok,
            TinyModelConfig(
                hidden_size=args.hidden,
                num_layers=args.layers,
                num_heads=max(1, args.hidden // 32),
                intermediate_size=args.hidden * 2,
            ),
        )
    parts = unlearning_parts(load_qa(world / "forget10.jsonl"), load_qa(world / "retain90.jsonl"), [], seed=0)
    method = METHODS.get(args.method).from_options({**json.loads(args.options), "steps": args.steps})
    cfg = TrainConfig(forget_batch_size=args.batch, retain_batch_size=args.batch, checkpoint_every=0, progress=False)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _rss_kb("VmRSS")
    _, res = train(model, tok, method, parts, cfg)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else (_rss_kb("VmHWM") - before) / 1024
    # the loop's clock starts after reference precomputation: that one-off pass is not a per-step cost
    print(json.dumps({"step_s": res.seconds / args.steps, "peak_mb": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF model directory (default: a tiny Llama built from config)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--world", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    from obliviate.data.world import write_world

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        write_world(tmp)
        common = [
            sys.executable,
            __file__,
            "--worker",
            "--world",
            tmp,
            "--steps",
            str(args.steps),
            "--batch",
            str(args.batch),
            "--hidden",
            str(args.hidden),
            "--layers",
            str(args.layers),
            "--threads",
            str(args.threads),
        ] + (["--model", args.model] if args.model else [])
        for base, other, other_opts in PAIRS:
            runs = {base: [], other: []}
            for _ in range(args.repeats):
                for name, opts in ((base, {}), (other, other_opts)):
                    out = subprocess.run(
                        [*common, "--method", name, "--options", json.dumps(opts)],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                    runs[name].append(json.loads(out.strip().splitlines()[-1]))
            med = {n: {k: statistics.median(r[k] for r in rs) for k in ("step_s", "peak_mb")} for n, rs in runs.items()}
            label = f"{other}{'' if other_opts else '+retain'} vs {base}"
            print(
                f"{label:24s} step time {med[other]['step_s'] * 1e3:7.1f} ms / {med[base]['step_s'] * 1e3:7.1f} ms"
                f" = {med[other]['step_s'] / med[base]['step_s']:.3f}x   peak memory {med[other]['peak_mb']:7.1f}"
                f" MB / {med[base]['peak_mb']:7.1f} MB = {med[other]['peak_mb'] / med[base]['peak_mb']:.3f}x"
            )


if __name__ == "__main__":
    main()
