"""KLoM over a distribution of oracles on the built-in world: methods beside each other in forget quality, model
utility and KLoM (Georgiev et al. 2024, arXiv 2410.23232; `obliviate.metrics.klom`).

    python bench/klom.py --out DIR [--oracles 5] [--unlearn-seeds 3] [--methods npo,simnpo,grad_diff] [--seed 0]
                         [--steps 300] [--forget-split forget10] [--option METHOD:KEY=VALUE ...] [--threads N]

Runs the public commands, each into DIR (re-running skips a step whose output exists):

    obliviate world     --out DIR/world --seed S
    obliviate finetune  --data DIR/world --out DIR/models --oracles K --steps STEPS --seed S
    obliviate unlearn   --model DIR/models/target --suite world --data DIR/world --method M
                        --seed S+j --out DIR/unlearned/M/seed{S+j}                (each method, j = 0 .. U-1)
    obliviate eval      --data DIR/world --out DIR/eval --oracle DIR/models/oracle --oracle DIR/models/oracle_seed1 ...
                        --model target=DIR/models/target --model M=DIR/unlearned/M/seed0,DIR/unlearned/M/seed1,...

and prints, per run: forget quality against THE oracle (mean over the run's seeds), forget quality against the pooled
oracles, model utility and KLoM (95th percentile over items) on forget, retain and holdout items. The oracle's row is
its KLoM against the other oracles: what retraining itself scores. `--option M:KEY=VALUE` passes a method option;
`{oracle}` in VALUE becomes DIR/models/oracle (e.g. `--option oracle_matching:oracle={oracle}`). Figures, not a test.
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

COLUMNS = (
    "forget_quality",
    "forget_quality_pooled",
    "model_utility",
    "klom_forget",
    "klom_retain",
    "klom_holdout",
)


def _obliviate(*args: str) -> None:
    cmd = [str(Path(sys.executable).with_name("obliviate")), *args]
    print("$ obliviate " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.2e}" if v != 0 and abs(v) < 1e-3 else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--oracles", type=int, default=5)
    p.add_argument("--unlearn-seeds", type=int, default=3)
    p.add_argument("--methods", default="npo,simnpo,grad_diff")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--forget-split", default="forget10")
    p.add_argument("--option", action="append", default=[], help="METHOD:KEY=VALUE; {oracle}: the oracle's dir")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.oracles < 2 or a.unlearn_seeds < 1:
        p.error("--oracles must be >= 2 (KLoM compares with their distribution) and --unlearn-seeds >= 1")
    out, methods = a.out, [m.strip() for m in a.methods.split(",") if m.strip()]
    threads = ["--threads", str(a.threads)] if a.threads else []
    models = out / "models"
    options: dict[str, list[str]] = {}
    for o in a.option:
        method, _, kv = o.partition(":")
        if not kv or "=" not in kv:
            p.error(f"--option must be METHOD:KEY=VALUE, got {o!r}")
        options.setdefault(method, []).append(kv.replace("{oracle}", str(models / "oracle")))
    if not (out / "world").exists():
        _obliviate("world", "--out", str(out / "world"), "--seed", str(a.seed))
    if not models.exists():
        _obliviate(
            "finetune", "--data", str(out / "world"), "--out", str(models), "--forget-split", a.forget_split,
            "--oracles", str(a.oracles), "--steps", str(a.steps), "--seed", str(a.seed), *threads,
        )  # fmt: skip
    oracles = ["oracle", *(f"oracle_seed{a.seed + j}" for j in range(1, a.oracles))]
    runs = {}
    for m in methods:
        runs[m] = []
        for j in range(a.unlearn_seeds):
            d = out / "unlearned" / m / f"seed{a.seed + j}"
            if not d.exists():
                opts = [x for kv in options.get(m, []) for x in ("--option", kv)]
                _obliviate(
                    "unlearn", "--model", str(models / "target"), "--suite", "world", "--data", str(out / "world"),
                    "--forget-split", a.forget_split, "--method", m, "--seed", str(a.seed + j), "--out", str(d),
                    "--checkpoint-every", "0", *opts, *threads,
                )  # fmt: skip
            runs[m].append(str(d))
    ev = out / "eval"
    if not ev.exists():
        args = ["eval", "--data", str(out / "world"), "--forget-split", a.forget_split, "--out", str(ev), *threads]
        args += [x for o in oracles for x in ("--oracle", str(models / o))]
        args += ["--model", f"target={models / 'target'}"]
        args += [x for m in methods for x in ("--model", f"{m}={','.join(runs[m])}")]
        _obliviate(*args)
    doc = json.loads((ev / "results.json").read_text(encoding="utf-8"))
    print(f"\n{a.oracles} oracles, {a.unlearn_seeds} unlearning seed(s) per method, {a.forget_split}, seed {a.seed}")
    print(f"{'run':16s}" + "".join(f"{c:>22s}" for c in COLUMNS))
    for run, m in doc["results"].items():
        print(f"{run:16s}" + "".join(f"{_fmt(m.get(c)):>22s}" for c in COLUMNS))
    print(f"\nwrote {ev}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
