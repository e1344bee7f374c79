"""Load benchmark of `obliviate serve`: N chat requests at a fixed concurrency against a server started in this
process on loopback, with micro-batching on (max_batch 16) and off (max_batch 1) in the same run. Prints p50/p99
latency, requests/s, dropped requests (anything but HTTP 200) and the on/off ratios. It prints figures; it is not
a test.

    python bench/serve_load.py                      # a tiny world model, trained here as `obliviate demo` does
    python bench/serve_load.py --model DIR --requests 200 --concurrency 16 --max-tokens 32 --threads 2

Clients are threads with one blocking HTTP connection per request (stdlib http.client), so the figures include
HTTP, JSON and the asyncio hand-off, not only the decode loop. Latency is per request, from send to last byte.

Two more modes:

    python bench/serve_load.py --baseline-serve OLD/src/obliviate/serve   # this tree's server against an older one
    python bench/serve_load.py --hardening                                # the defences' figures (serve_checks.py)

--baseline-serve takes a copy of an older `src/obliviate/serve` folder (for the last commit:
`mkdir OLD && git archive HEAD src/obliviate/serve | tar -x -C OLD`). Both servers run in this process on the same
loaded model, with batching on, and take the load in alternating bursts (--rounds bursts of --requests each), so
a busy machine's drift falls on both alike; the rest of the package is this tree's for both, so the ratio is the
server's alone.
"""

import argparse
import http.client
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

FALLBACK_QUESTIONS = [
    "What is the capital of France?",
    "Tell me a short story about a cat.",
    "hi",
    "Explain what a tokenizer does.",
    "Where was Vyrek Pellam born?",
]


def tiny_world_model(work: Path, steps: int) -> tuple[Path, list[str]]:
    """A world and its target model, as `obliviate demo` builds them (see obliviate.demos.world.run_demo)."""
    from obliviate.data.schema import load_qa
    from obliviate.data.world import WorldSpec, world_texts, write_world
    from obliviate.models.tiny import build_tokenizer
    from obliviate.unlearning.world_models import train_world_models

    world = work / "world"
    write_world(world, WorldSpec(seed=0))
    tok = build_tokenizer(world_texts(world))
    t0 = time.perf_counter()
    train_world_models(world, work / "models", steps=steps, tokenizer=tok, only="target")
    print(f"trained the tiny target model ({steps} steps) in {time.perf_counter() - t0:.1f} s", flush=True)
    return work / "models" / "target", [it.question for it in load_qa(world / "train.jsonl")]


def fire(port: int, questions: list[str], n: int, concurrency: int, max_tokens: int, name: str):
    """n requests, `concurrency` in flight at once. Returns (latencies of the 200s in s, dropped, wall s)."""

    def one(i):
        body = json.dumps(
            {
                "model": name,
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": questions[i % len(questions)]}],
            }
        )
        t0 = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            return time.perf_counter() - t0, resp.status == 200
        except OSError:
            return time.perf_counter() - t0, False

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    return [t for t, ok in results if ok], sum(not ok for _, ok in results), wall


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


def throughput(path: Path, questions: list[str], args, max_batch: int) -> dict:
    """One load run against a server (of whichever `obliviate.serve` is importable) with `max_batch`."""
    from obliviate.models.load import load_model
    from obliviate.serve import Engine, background_server, create_app

    model, tok = load_model(str(path))
    engine = Engine(
        model,
        tok,
        name="bench",
        max_batch=max_batch,
        max_queue=max(64, args.concurrency),
        batch_window_ms=args.batch_window_ms,
    )
    with background_server(create_app(engine)) as port:
        fire(port, questions, min(8, args.requests), min(4, args.concurrency), args.max_tokens, "bench")  # warm
        engine.batch_sizes.clear()
        lat, dropped, wall = fire(port, questions, args.requests, args.concurrency, args.max_tokens, "bench")
    sizes = list(engine.batch_sizes)
    return dict(
        p50=pct(lat, 0.5) * 1e3,
        p99=pct(lat, 0.99) * 1e3,
        rps=len(lat) / wall,
        dropped=dropped,
        batch=sum(sizes) / max(1, len(sizes)),
        wall=wall,
    )


def rate(bursts) -> float:
    """Requests answered 200 per second, over (answered, dropped, wall s, latencies) bursts."""
    return sum(b[0] for b in bursts) / sum(b[2] for b in bursts)


def compare(path: Path, questions: list[str], args) -> None:
    """This tree's server against --baseline-serve, both running in this process on one loaded model, in
    alternating bursts of --requests (so that a busy machine's drift falls on both alike), --rounds times."""
    import re

    from obliviate.models.load import load_model
    from obliviate.serve import Engine, background_server, create_app

    model, tok = load_model(str(path))
    with tempfile.TemporaryDirectory(prefix="serve-baseline-") as tmp:
        # the older package, importable beside this one as `serve_baseline` (its own imports renamed to match)
        shutil.copytree(args.baseline_serve, Path(tmp) / "serve_baseline", ignore=shutil.ignore_patterns("__pycache__"))
        for f in (Path(tmp) / "serve_baseline").glob("*.py"):
            f.write_text(re.sub(r"\bobliviate\.serve\b", "serve_baseline", f.read_text()))
        sys.path.insert(0, tmp)
        import serve_baseline as old

        apps = {
            "before": old.create_app(
                old.Engine(
                    model,
                    tok,
                    name="bench",
                    max_batch=args.max_batch,
                    max_queue=max(64, args.concurrency),
                    batch_window_ms=args.batch_window_ms,
                )
            ),
            "after": create_app(
                Engine(
                    model,
                    tok,
                    name="bench",
                    max_batch=args.max_batch,
                    max_queue=max(64, args.concurrency),
                    batch_window_ms=args.batch_window_ms,
                )
            ),
        }
        with old.background_server(apps["before"]) as before, background_server(apps["after"]) as after:
            ports = {"before": before, "after": after}
            for port in ports.values():  # warm both
                fire(port, questions, min(8, args.requests), min(4, args.concurrency), args.max_tokens, "bench")
            done = {side: [] for side in ports}
            for r in range(args.rounds):
                for side in ("before", "after") if r % 2 == 0 else ("after", "before"):
                    lat, dropped, wall = fire(
                        ports[side], questions, args.requests, args.concurrency, args.max_tokens, "bench"
                    )
                    done[side].append((len(lat), dropped, wall, lat))
                if (r + 1) % max(1, args.rounds // 5) == 0:
                    print(
                        f"round {r + 1}: "
                        + ", ".join(f"{side} {rate(v):.1f} req/s so far" for side, v in done.items()),
                        flush=True,
                    )
    rps = {side: rate(v) for side, v in done.items()}
    p50 = {side: pct([t for *_, lat in v for t in lat], 0.5) * 1e3 for side, v in done.items()}
    per_round = [
        done["after"][i][0] / done["after"][i][2] / (done["before"][i][0] / done["before"][i][2])
        for i in range(args.rounds)
    ]
    dropped = {side: sum(d for _, d, _, _ in v) for side, v in done.items()}
    print(
        f"\nconcurrency {args.concurrency}, {args.rounds} rounds of {args.requests} requests each: before "
        f"{rps['before']:.1f} req/s (p50 {p50['before']:.0f} ms, dropped {dropped['before']}), after "
        f"{rps['after']:.1f} req/s (p50 {p50['after']:.0f} ms, dropped {dropped['after']}); after / before "
        f"{rps['after'] / rps['before']:.3f}x overall, median of the rounds' ratios {median(per_round):.3f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF chat model directory (default: train a tiny world model here)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=16, help="the batching-on setting (off is 1)")
    ap.add_argument("--batch-window-ms", type=float, default=10.0)
    ap.add_argument("--train-steps", type=int, default=300, help="tiny model: fine-tuning steps (demo: 300)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--baseline-serve", type=Path, help="an older src/obliviate/serve folder to compare against")
    ap.add_argument("--rounds", type=int, default=20, help="--baseline-serve: bursts of --requests on each side")
    ap.add_argument("--hardening", action="store_true", help="measure the defences instead (serve_checks.py)")
    ap.add_argument(
        "--questions",
        type=Path,
        help="a JSON list of questions to ask (default: the tiny world's, or a few generic ones with --model)",
    )
    args = ap.parse_args()
    if min(args.requests, args.concurrency, args.max_tokens, args.max_batch, args.threads, args.rounds) < 1:
        ap.error("--requests, --concurrency, --max-tokens, --max-batch, --threads and --rounds must be >= 1")
    if args.baseline_serve and not (args.baseline_serve / "engine.py").is_file():
        ap.error(f"--baseline-serve {args.baseline_serve}: not a serve package folder (no engine.py)")

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        path, questions = (
            (Path(args.model), FALLBACK_QUESTIONS) if args.model else tiny_world_model(Path(tmp), args.train_steps)
        )
        if args.questions:
            questions = json.loads(args.questions.read_text())
        if args.hardening:
            from serve_checks import hardening

            return hardening(path, questions)
        if args.baseline_serve:
            return compare(path, questions, args)
        print(
            f"model {path.name}; {args.requests} requests, concurrency {args.concurrency}, max_tokens "
            f"{args.max_tokens}, {args.threads} torch threads",
            flush=True,
        )
        rows = {
            label: throughput(path, questions, args, max_batch)
            for label, max_batch in (("batching on", args.max_batch), ("batching off", 1))
        }
    print(f"\n{'':14}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}{'dropped':>9}{'mean batch':>12}{'wall s':>8}")
    for label, r in rows.items():
        print(
            f"{label:14}{r['p50']:9.0f}{r['p99']:9.0f}{r['rps']:8.1f}{r['dropped']:9d}{r['batch']:12.1f}"
            f"{r['wall']:8.1f}"
        )
    on, off = rows["batching on"], rows["batching off"]
    print(
        f"\nbatching on / off: {on['rps'] / off['rps']:.2f}x requests/s, p50 latency {on['p50'] / off['p50']:.2f}x, "
        f"p99 latency {on['p99'] / off['p99']:.2f}x"
    )


if __name__ == "__main__":
    main()
