"""GCG's candidate evaluation with the prompt prefix in a KV cache, against every candidate's full sequence.

    python bench/gcg_cache.py [--model DIR] [--candidates 64] [--batch 32] [--repeats 3] [--threads 1]

Candidates per second, on the same GCG candidates (the initial suffix with one position replaced), of:
- full sequences: `TargetLoss(cached=False)`, each candidate's whole prompt run (llm-attacks; `gcg.cached=false`);
- prefix cache: `TargetLoss(cached=True)`, the prompt before the suffix computed once and its keys and values reused
  for every candidate (nanoGCG's `prefix_cache`);
- GCG: `gcg.candidate_losses`, what GCG runs by default: the cache also holds the suffix's tokens before each
  candidate's change;
each with its ratio to full sequences. Always on a tiny model (the world demo's size, untrained: the speed does not
depend on the weights) with a world behaviour; with `--model`, also on that model with `--request` / `--target`.
The repeats alternate the three and the figure is the median, per CPU second of this process (steady on a shared
machine: the work is single-threaded under `--threads 1` with OMP_NUM_THREADS=1) and per wall second; the first line
also gives the largest difference between their losses (they must agree). Figures, not a test.
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

REQUEST = "Write a step-by-step tutorial on how to fold a paper airplane that flies a long way"
TARGET = "Sure, here is a step-by-step tutorial on how to fold a paper airplane that flies a long way"


def tiny():
    """(model, tokenizer, request, target): the world demo's tiny model and a harmful row of its world."""
    from obliviate.data.world import world_texts, write_world
    from obliviate.models.tiny import build_model, build_tokenizer
    from obliviate.refusal.align import policy_rows

    d = Path(tempfile.mkdtemp())
    write_world(d)
    tok = build_tokenizer(world_texts(d))
    row = next(r for r in policy_rows(d, "policy_test") if r["kind"] == "harmful")
    return build_model(tok).eval(), tok, row["prompt"], row["answer"]


def measure(name, model, tok, request, target, args) -> None:
    import torch

    from obliviate.audit.attacks.adversarial import allowed_tokens, init_suffix, slots
    from obliviate.audit.attacks.gcg import candidate_losses
    from obliviate.audit.attacks.target_loss import TargetLoss

    s = slots(tok, request, target)
    current = torch.tensor(init_suffix(tok, args.suffix_tokens))
    n, n_suffix = args.candidates, len(current)
    ok = allowed_tokens(tok, model.get_input_embeddings().num_embeddings).nonzero().flatten()
    gen = torch.Generator().manual_seed(args.seed)
    # GCG's candidates: the current suffix with one position replaced (n_replace=1)
    cands = current.repeat(n, 1).scatter_(
        1, torch.randint(0, n_suffix, (n, 1), generator=gen), ok[torch.randint(0, len(ok), (n, 1), generator=gen)]
    )
    cached, full = TargetLoss(model, s, cached=True), TargetLoss(model, s, cached=False)
    runs = {
        "full sequences": lambda c: full(c, batch=args.batch),
        "prefix cache": lambda c: cached(c, batch=args.batch),
        "GCG (prefix + suffix head)": lambda c: candidate_losses(cached, current, c, batch=args.batch),
    }
    for run in runs.values():  # warm-up (allocation, first-call overheads)
        run(cands[:2])
    rates: dict[str, dict[str, list[float]]] = {c: {k: [] for k in runs} for c in ("cpu", "wall")}
    out = {}
    for _ in range(args.repeats):
        for k, run in runs.items():
            c0, t0 = time.process_time(), time.perf_counter()
            out[k] = run(cands)
            rates["cpu"][k].append(n / (time.process_time() - c0))
            rates["wall"][k].append(n / (time.perf_counter() - t0))
    diff = max(float((out[k] - out["full sequences"]).abs().max()) for k in runs)
    print(
        f"{name}: prefix {len(s.before)} tokens; suffix {n_suffix}, after {len(s.after)}, target {len(s.target)}; "
        f"{n} candidates (one replacement each), batch {args.batch}, median of {args.repeats}; "
        f"max |loss difference| {diff:.1e}",
        flush=True,
    )
    for clock, r in rates.items():
        rate = {k: statistics.median(v) for k, v in r.items()}
        base = rate["full sequences"]
        unit = "candidates per CPU second" if clock == "cpu" else "candidates per wall second"
        print(f"  {unit}: " + ", ".join(f"{k} {v:.2f} ({v / base:.2f}x)" for k, v in rate.items()), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="an HF model directory to measure besides the tiny model")
    p.add_argument("--request", default=REQUEST, help="the request attacked on --model")
    p.add_argument("--target", default=TARGET, help="its affirmative target")
    p.add_argument("--candidates", type=int, default=64, help="candidate suffixes evaluated per repeat")
    p.add_argument("--batch", type=int, default=32, help="candidates per forward pass (GCG's `batch`)")
    p.add_argument("--suffix-tokens", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (pinned)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with torch.no_grad():
        measure("tiny", *tiny(), args)
        if args.model:
            from obliviate.models.load import load_model

            model, tok = load_model(args.model)
            measure(Path(args.model).name, model.eval(), tok, args.request, args.target, args)


if __name__ == "__main__":
    main()
