"""Load benchmark of `obliviate serve`: requests at a fixed concurrency against servers started in this process on
loopback. It prints figures; it is not a test.

    python bench/serve_load.py                      # a tiny world model, trained here as `obliviate demo` does
    python bench/serve_load.py --model DIR --requests 64 --concurrency 16 --short 8 --long 64 --threads 2

The default run sets continuous batching against static batching (the server's `--batching continuous|static`),
both servers on the one loaded model, with mixed reply lengths: every `--long-every`-th request asks `--long`
tokens, the others `--short`, and a guard that bans the stop tokens (`Endless`) makes each reply exactly that
long. The two servers take the load in alternating bursts (--rounds bursts of --requests each), so a busy
machine's drift falls on both alike.
Prints requests/s, tokens/s, the p50 latency of the short and of the long replies, the p99, dropped requests
(anything but HTTP 200) and the mean rows per decode step, and the continuous / static ratios.

Clients are threads with one blocking HTTP connection per request (stdlib http.client), so the figures include
HTTP, JSON and the asyncio hand-off, not only the decode loop. Latency is per request, from send to last byte.

Three more modes:

    python bench/serve_load.py --on-off                                   # micro-batching on (16) against off (1)
    python bench/serve_load.py --baseline-serve OLD/src/obliviate/serve   # this tree's server against an older one
    python bench/serve_load.py --hardening                                # the defences' figures (serve_checks.py)

--baseline-serve takes a copy of an older `src/obliviate/serve` folder (for the last commit:
`mkdir OLD && git archive HEAD src/obliviate/serve | tar -x -C OLD`). Both servers run in this process on the same
loaded model, with batching on, and take the load in alternating bursts; the rest of the package is this tree's for
both, so the ratio is the server's alone. With --mixed it sends the mixed workload (the `Endless` guard on both
servers).
"""

import argparse
import http.client
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from obliviate.engine.hooks import Guard

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


@dataclass
class Endless(Guard):
    """Bans the stop tokens, so that every reply runs to its max_tokens: the mixed lengths exactly as asked, on any
    server (an older one too) and with the same cost on each."""

    name = "endless"
    stops: tuple = ()

    def process_logits(self, step, ids, logits, rows):
        logits[:, list(self.stops)] = float("-inf")
        return logits


def request_body(questions: list[str], i: int, args, mixed: bool) -> tuple[dict, bool]:
    """Request i's body, and whether it is a long one (mixed: every --long-every-th)."""
    long = mixed and i % args.long_every == 0
    body = {
        "model": "bench",
        "max_tokens": (args.long if long else args.short) if mixed else args.max_tokens,
        "messages": [{"role": "user", "content": questions[i % len(questions)]}],
    }
    return body, long


def fire(port: int, questions: list[str], n: int, concurrency: int, args, mixed=False):
    """n requests, `concurrency` in flight at once. Returns ([(latency s, answered 200, long)], wall s)."""

    def one(i):
        body, long = request_body(questions, i, args, mixed)
        t0 = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            return time.perf_counter() - t0, resp.status == 200, long
        except OSError:
            return time.perf_counter() - t0, False, long

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    return results, time.perf_counter() - t0


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


def figures(bursts: list, args, mixed: bool) -> dict:
    """Figures over (results, wall s) bursts: requests/s and tokens/s answered, p50 of short and long, p99 (ms)."""
    res = [r for burst, _ in bursts for r in burst]
    wall = sum(w for _, w in bursts)
    ok = [r for r in res if r[1]]
    per = {True: args.long, False: args.short} if mixed else {False: args.max_tokens}
    return dict(
        rps=len(ok) / wall,
        tps=sum(per[long] for _, _, long in ok) / wall,  # the budgets: exact when mixed (Endless), else at most
        p50_short=pct([t for t, _, long in ok if not long], 0.5) * 1e3,
        p50_long=pct([t for t, _, long in ok if long], 0.5) * 1e3,
        p99=pct([t for t, _, _ in ok], 0.99) * 1e3,
        dropped=len(res) - len(ok),
        wall=wall,
    )


def alternate(ports: dict, questions: list[str], args, mixed: bool) -> dict:
    """--rounds bursts of --requests on each side, in alternating order; side -> [(results, wall s)]."""
    for port in ports.values():  # warm both
        fire(port, questions, min(8, args.requests), min(4, args.concurrency), args, mixed)
    done = {side: [] for side in ports}
    sides = list(ports)
    for r in range(args.rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            done[side].append(fire(ports[side], questions, args.requests, args.concurrency, args, mixed))
        if (r + 1) % max(1, args.rounds // 5) == 0:
            so_far = ", ".join(f"{side} {figures(v, args, mixed)['rps']:.2f} req/s" for side, v in done.items())
            print(f"round {r + 1}: {so_far} so far", flush=True)
    return done


def engine(model, tok, args, max_batch: int, batching: str = "continuous", guards=()):
    from obliviate.serve import Engine

    return Engine(
        model,
        tok,
        list(guards),
        name="bench",
        max_batch=max_batch,
        max_queue=max(64, args.concurrency),
        batch_window_ms=args.batch_window_ms,
        batching=batching,
    )


def table(rows: dict, mixed: bool) -> None:
    print(
        f"\n{'':12}{'req/s':>8}{'tok/s':>8}{'p50 short':>11}{'p50 long':>10}{'p99 ms':>9}{'dropped':>9}"
        f"{'rows/step':>11}{'wall s':>8}"
    )
    for label, r in rows.items():
        print(
            f"{label:12}{r['rps']:8.2f}{r['tps']:8.1f}{r['p50_short']:11.0f}{r['p50_long']:10.0f}{r['p99']:9.0f}"
            f"{r['dropped']:9d}{r.get('rows', float('nan')):11.1f}{r['wall']:8.1f}"
        )


def batching(path: Path, questions: list[str], args) -> None:
    """Continuous against static batching, side by side on one loaded model, with mixed reply lengths."""
    from obliviate.models.encode import stop_ids
    from obliviate.models.load import load_model
    from obliviate.serve import background_server, create_app

    model, tok = load_model(str(path))
    endless = [Endless(tuple(stop_ids(tok, model)))]
    engines = {mode: engine(model, tok, args, args.max_batch, mode, endless) for mode in ("continuous", "static")}
    with (
        background_server(create_app(engines["continuous"])) as cont,
        background_server(create_app(engines["static"])) as static,
    ):
        for e in engines.values():
            e.step_rows.clear()
        done = alternate({"continuous": cont, "static": static}, questions, args, mixed=True)
    rows = {side: figures(v, args, True) for side, v in done.items()}
    for side, e in engines.items():
        rows[side]["rows"] = sum(e.step_rows) / max(1, len(e.step_rows))
    table(rows, True)
    c, s = rows["continuous"], rows["static"]
    print(
        f"\ncontinuous / static: {c['rps'] / s['rps']:.2f}x requests/s, {c['tps'] / s['tps']:.2f}x tokens/s, p50 "
        f"latency of the short replies {c['p50_short'] / s['p50_short']:.2f}x, of the long ones "
        f"{c['p50_long'] / s['p50_long']:.2f}x"
    )


def on_off(path: Path, questions: list[str], args) -> None:
    """Micro-batching on (--max-batch) against off (1), one after the other."""
    from obliviate.models.load import load_model
    from obliviate.serve import background_server, create_app

    model, tok = load_model(str(path))
    rows = {}
    for label, max_batch in (("batching on", args.max_batch), ("batching off", 1)):
        e = engine(model, tok, args, max_batch)
        with background_server(create_app(e)) as port:
            fire(port, questions, min(8, args.requests), min(4, args.concurrency), args)  # warm
            e.step_rows.clear()
            rows[label] = figures([fire(port, questions, args.requests, args.concurrency, args)], args, False)
        rows[label]["rows"] = sum(e.step_rows) / max(1, len(e.step_rows))
    table(rows, False)
    on, off = rows["batching on"], rows["batching off"]
    print(f"\nbatching on / off: {on['rps'] / off['rps']:.2f}x requests/s, p99 latency {on['p99'] / off['p99']:.2f}x")


def compare(path: Path, questions: list[str], args) -> None:
    """This tree's server against --baseline-serve, both running in this process on one loaded model, in
    alternating bursts of --requests (so that a busy machine's drift falls on both alike), --rounds times."""
    import re

    from obliviate.models.encode import stop_ids
    from obliviate.models.load import load_model
    from obliviate.serve import background_server, create_app

    model, tok = load_model(str(path))
    guards = [Endless(tuple(stop_ids(tok, model)))] if args.mixed else []
    with tempfile.TemporaryDirectory(prefix="serve-baseline-") as tmp:
        # the older package, importable beside this one as `serve_baseline` (its own imports renamed to match)
        shutil.copytree(args.baseline_serve, Path(tmp) / "serve_baseline", ignore=shutil.ignore_patterns("__pycache__"))
        for f in (Path(tmp) / "serve_baseline").glob("*.py"):
            f.write_text(re.sub(r"\bobliviate\.serve\b", "serve_baseline", f.read_text()))
        sys.path.insert(0, tmp)
        import serve_baseline as old

        before = old.Engine(
            model,
            tok,
            list(guards),
            name="bench",
            max_batch=args.max_batch,
            max_queue=max(64, args.concurrency),
            batch_window_ms=args.batch_window_ms,
        )
        after = engine(model, tok, args, args.max_batch, guards=guards)
        with (
            old.background_server(old.create_app(before)) as b,
            background_server(create_app(after)) as a,
        ):
            done = alternate({"before": b, "after": a}, questions, args, mixed=args.mixed)
    rows = {side: figures(v, args, args.mixed) for side, v in done.items()}
    rate = [{side: sum(r[1] for r in done[side][i][0]) / done[side][i][1] for side in done} for i in range(args.rounds)]
    per_round = [r["after"] / r["before"] for r in rate]
    table(rows, args.mixed)
    print(
        f"\nafter / before: {rows['after']['rps'] / rows['before']['rps']:.3f}x requests/s overall, median of the "
        f"rounds' ratios {median(per_round):.3f}x; p50 latency of the short replies "
        f"{rows['after']['p50_short'] / rows['before']['p50_short']:.2f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF chat model directory (default: train a tiny world model here)")
    ap.add_argument("--requests", type=int, default=64, help="requests per burst")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--short", type=int, default=8, help="mixed lengths: the short replies' tokens")
    ap.add_argument("--long", type=int, default=64, help="mixed lengths: the long replies' tokens")
    ap.add_argument("--long-every", type=int, default=4, help="mixed lengths: every k-th request is a long one")
    ap.add_argument("--max-tokens", type=int, default=32, help="--on-off, and --baseline-serve without --mixed")
    ap.add_argument("--max-batch", type=int, default=16, help="rows decoded together at most")
    ap.add_argument("--batch-window-ms", type=float, default=10.0)
    ap.add_argument("--train-steps", type=int, default=300, help="tiny model: fine-tuning steps (demo: 300)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--rounds", type=int, help="bursts of --requests on each side (default 4; --baseline-serve 20)")
    ap.add_argument("--on-off", action="store_true", help="micro-batching on against off instead")
    ap.add_argument("--baseline-serve", type=Path, help="an older src/obliviate/serve folder to compare against")
    ap.add_argument("--mixed", action="store_true", help="--baseline-serve: the mixed workload")
    ap.add_argument("--hardening", action="store_true", help="measure the defences instead (serve_checks.py)")
    ap.add_argument(
        "--questions",
        type=Path,
        help="a JSON list of questions to ask (default: the tiny world's, or a few generic ones with --model)",
    )
    args = ap.parse_args()
    args.rounds = args.rounds or (20 if args.baseline_serve else 4)
    sizes = (args.requests, args.concurrency, args.short, args.long, args.long_every, args.max_tokens)
    if min(*sizes, args.max_batch, args.threads, args.rounds) < 1:
        ap.error("the counts (--requests, --concurrency, --short, --long, --rounds, ...) must be >= 1")
    if args.baseline_serve and not (args.baseline_serve / "engine.py").is_file():
        ap.error(f"--baseline-serve {args.baseline_serve}: not a serve package folder (no engine.py)")

    import torch

    torch.set_num_threads(args.threads)  # pinned: the figures of a shared machine drift less
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        path, questions = (
            (Path(args.model), FALLBACK_QUESTIONS) if args.model else tiny_world_model(Path(tmp), args.train_steps)
        )
        if args.questions:
            questions = json.loads(args.questions.read_text())
        print(
            f"model {path.name}; {args.rounds} rounds of {args.requests} requests, concurrency {args.concurrency}, "
            f"{args.threads} torch threads",
            flush=True,
        )
        if args.hardening:
            from serve_checks import hardening

            return hardening(path, questions)
        if args.baseline_serve:
            return compare(path, questions, args)
        if args.on_off:
            return on_off(path, questions, args)
        print(
            f"mixed lengths: every {args.long_every}th request {args.long} tokens, the others {args.short}",
            flush=True,
        )
        return batching(path, questions, args)


if __name__ == "__main__":
    main()
