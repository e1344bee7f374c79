"""RESTOR-style recovery on the built-in world: unlearn misinformation, check the true answers come back.

    python bench/restor.py --out DIR [--misinformation 50] [--copies 3] [--methods npo,grad_diff] [--seed 0]
                           [--steps 300] [--threads N]

Runs the public commands, each into DIR (re-running skips a step whose output exists):

    obliviate world     --out DIR/world --misinformation K --misinformation-copies C --seed S
    obliviate finetune  --data DIR/world --out DIR/models --forget-split forget00 --steps STEPS --seed S
    obliviate unlearn   --model DIR/models/target --suite world --data DIR/world --forget-split forget00
                        --method M --out DIR/unlearned/M --seed S                      (for each method)
    obliviate eval      --model target=DIR/models/target --model M=DIR/unlearned/M ... --oracle DIR/models/oracle
                        --data DIR/world --forget-split forget00 --out DIR/eval_M1_M2...

and prints, per run: `misinformation_acc` (answers with the false value), `recovered_acc` (RESTOR: answers with the
true value; Rezaei et al. 2024, arXiv 2411.00204), `recovered / oracle`, forget quality, model utility and retain
value accuracy. The target is the corrupted model (clean data + misinformation), the oracle the clean one (clean data
only, never saw the misinformation). Figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

COLUMNS = ("misinformation_acc", "recovered_acc", "forget_quality", "model_utility", "retain_value_acc")


def _obliviate(*args: str) -> None:
    cmd = [str(Path(sys.executable).with_name("obliviate")), *args]
    print("$ obliviate " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def run(out: Path, k: int, copies: int, methods: list[str], seed: int, steps: int, threads: int | None) -> dict:
    t = ["--threads", str(threads)] if threads else []
    world, models, split = out / "world", out / "models", ["--forget-split", "forget00"]
    if not world.exists():
        _obliviate(
            "world",
            "--out",
            str(world),
            "--misinformation",
            str(k),
            "--misinformation-copies",
            str(copies),
            "--seed",
            str(seed),
        )
    if not models.exists():
        _obliviate(
            "finetune",
            "--data",
            str(world),
            "--out",
            str(models),
            *split,
            "--steps",
            str(steps),
            "--seed",
            str(seed),
            *t,
        )
    for m in methods:
        if not (out / "unlearned" / m).exists():
            _obliviate(
                "unlearn",
                "--model",
                str(models / "target"),
                "--suite",
                "world",
                "--data",
                str(world),
                *split,
                "--method",
                m,
                "--out",
                str(out / "unlearned" / m),
                "--seed",
                str(seed),
                *t,
            )
    ev = out / ("eval_" + "_".join(methods))  # one evaluation per set of methods
    if not ev.exists():
        runs = [f"target={models / 'target'}"] + [f"{m}={out / 'unlearned' / m}" for m in methods]
        _obliviate(
            "eval",
            *[a for r in runs for a in ("--model", r)],
            "--oracle",
            str(models / "oracle"),
            "--data",
            str(world),
            *split,
            "--out",
            str(ev),
            *t,
        )
    return json.loads((ev / "results.json").read_text())


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.1e}" if 0 < abs(v) < 1e-3 else f"{v:.3f}"


def table(doc: dict) -> str:
    res = doc["results"]
    oracle = res.get("oracle", {}).get("recovered_acc")
    head = ["run", *COLUMNS[:2], "recovered / oracle", *COLUMNS[2:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, r in res.items():
        ratio = r["recovered_acc"] / oracle if oracle and "recovered_acc" in r else None
        cells = [r.get(c) for c in COLUMNS[:2]] + [ratio] + [r.get(c) for c in COLUMNS[2:]]
        lines.append("| " + " | ".join([run] + [_fmt(v) for v in cells]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--misinformation", type=int, default=50, help="false facts taught to the target")
    ap.add_argument("--copies", type=int, default=3, help="copies of each false fact in the training data")
    ap.add_argument("--methods", default="npo,grad_diff", help="comma-separated registered methods")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300, help="finetune steps per model")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    print(table(run(a.out, a.misinformation, a.copies, methods, a.seed, a.steps, a.threads)))


if __name__ == "__main__":
    main()
