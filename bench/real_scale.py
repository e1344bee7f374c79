"""Performance at real scale (issue #9, part 9): figures on a real chat model, not tests.

Three subcommands, each printing figures measured in the same run (A/B interleaved, medians):

    python bench/real_scale.py train      # NPO vs GradAscent step time and peak memory, LoRA r=8 and full FT
    python bench/real_scale.py eval       # score_model vs a per-sample, per-metric evaluator (OpenUnlearning-style)
    python bench/real_scale.py generate   # obliviate.engine.generation.generate vs transformers.pipeline("text-generation")

Defaults: models/smollm2-135m-instruct (`--model DIR` for another HF causal LM), torch threads = 1
(`--threads`), the built-in world (written to a temporary directory). On a 2-core CPU: train about 6 min
(8 with --profile, 4 with --flush-denormal; full-FT NPO steps are slow, see README), eval 4 min,
generate 3.5 min; `--help` on each lists its size flags.

train: each run is its own subprocess (clean allocator, clean RSS) of the real loop, `obliviate.engine.train.train`
with the registered methods. Step time is the median over steps 2..N of the wall time between consecutive
`on_step` callbacks (a whole loop iteration: collation, forward, backward, clipping, AdamW); step 1 is left
out (it allocates AdamW's state); the process CPU time of the same steps is printed too (less sensitive than
wall time to other jobs on a shared machine). NPO's one-off reference pass (`reference_logps`, before the loop) is timed
separately, with its own peak RSS. Memory during the steps is (a) the peak RSS increase (VmHWM reset through
/proc/self/clear_refs at the first loss call, read after the last step; both methods first run one no-grad
forward to touch the lazily mapped weights, and free heap pages are trimmed before step 1) and (b) with `--profile`, the peak of
torch's own CPU allocations from torch.profiler's memory events (tracemalloc sees only Python's allocator,
not torch's, so it is not used). NPO runs without its retain term (retain_weight=0), as GA has none.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "smollm2-135m-instruct"
PAIR = (("grad_ascent", {}), ("npo", {"retain_weight": 0.0}))


def _kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS


def _malloc_trim() -> None:
    """Hand glibc's free heap pages back to the OS, so memory freed earlier does not hide later growth."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _setup(args):
    import torch

    torch.set_num_threads(args.threads)
    from obliviate.models.load import load_model

    model, tok = load_model(str(args.model))
    return torch, model, tok


# --- a. training step time and memory --------------------------------------------------------------------


def train_worker(args) -> None:
    import obliviate.engine.train as tr
    from obliviate.data.schema import load_qa
    from obliviate.unlearning.methods import METHODS
    from obliviate.unlearning.run import unlearning_parts

    torch, model, tok = _setup(args)
    if args.flush_denormal:  # what a fix in train() would do on CPU: subnormal floats computed as zero
        torch.set_flush_denormal(True)
    world = Path(args.world)
    forget = load_qa(world / f"{args.forget_split}.jsonl")
    parts = unlearning_parts(forget, load_qa(world / "retain90.jsonl"), [], seed=0)
    # Same history for both methods before the loop: touch every weight page (safetensors are mapped lazily)
    # with one no-grad forward, so the steps' RSS does not include first-touch costs that NPO's reference
    # pass would otherwise have paid for NPO only.
    from obliviate.models.encode import collate, encode_pair

    with torch.no_grad():
        model(
            **{
                k: v
                for k, v in collate(
                    [encode_pair(tok, it.question, it.answer) for it in forget[: args.batch]], tok.pad_token_id
                ).items()
                if k != "labels"
            }
        )
    method = METHODS.get(args.method).from_options({**json.loads(args.options), "steps": args.steps})
    cfg = tr.TrainConfig(
        forget_batch_size=args.batch,
        retain_batch_size=args.batch,
        checkpoint_every=0,
        progress=False,
        lora_r=args.lora_r,
    )
    rec = {"ref_s": 0.0, "ref_peak_mb": 0.0, "ends": [], "cpu_ends": []}

    orig_ref = tr.reference_logps

    def timed_ref(*a, **k):
        _reset_hwm()
        rss0, t = _kb("VmRSS"), time.perf_counter()
        out = orig_ref(*a, **k)
        rec["ref_s"] += time.perf_counter() - t
        rec["ref_peak_mb"] = max(rec["ref_peak_mb"], (_kb("VmHWM") - rss0) / 1024)
        return out

    tr.reference_logps = timed_ref
    prof = None
    orig_loss = method.loss

    def loss(*a, **k):  # the first call marks the start of step 1
        nonlocal prof
        if "t0" not in rec:
            if args.profile:
                from torch.profiler import ProfilerActivity, profile

                prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
                prof.start()
            _malloc_trim()
            _reset_hwm()
            rec["rss0"], rec["t0"], rec["c0"] = _kb("VmRSS"), time.perf_counter(), time.process_time()
        return orig_loss(*a, **k)

    def on_step(step, _model):
        rec["ends"].append(time.perf_counter())
        rec["cpu_ends"].append(time.process_time())
        if step == args.steps:
            rec["peak_mb"] = (_kb("VmHWM") - rec["rss0"]) / 1024
            if prof is not None:
                prof.stop()

    method.loss = loss
    tr.train(model, tok, method, parts, cfg, on_step=on_step)
    times = [b - a for a, b in zip([rec["t0"], *rec["ends"]], rec["ends"])]
    cpu = [b - a for a, b in zip([rec["c0"], *rec["cpu_ends"]], rec["cpu_ends"])]
    out = {
        "step_s": statistics.median(times[1:] or times),
        "first_s": times[0],
        "peak_mb": rec["peak_mb"],
        "step_cpu_s": statistics.median(cpu[1:] or cpu),
        "ref_s": rec["ref_s"],
        "ref_peak_mb": rec["ref_peak_mb"],
    }
    if prof is not None:
        ev = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
        out["torch_peak_mb"] = max(itertools.accumulate(n for _, n in ev), default=0) / 2**20
    print(json.dumps(out))


def train_bench(args) -> None:
    from obliviate.data.world import write_world

    modes = [m.strip() for m in args.modes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        write_world(tmp)
        runs = {}  # (mode, method, profiled) -> list of worker results

        def run(mode, name, opts, profile):
            cmd = (
                [
                    sys.executable,
                    __file__,
                    "train",
                    "--worker",
                    "--world",
                    tmp,
                    "--model",
                    str(args.model),
                    "--forget-split",
                    args.forget_split,
                    "--steps",
                    str(args.steps),
                    "--batch",
                    str(args.batch),
                    "--threads",
                    str(args.threads),
                    "--lora-r",
                    str(args.lora_r if mode == "lora" else 0),
                    "--method",
                    name,
                    "--options",
                    json.dumps(opts),
                ]
                + (["--profile"] if profile else [])
                + (["--flush-denormal"] if args.flush_denormal else [])
            )
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                sys.exit(f"worker failed ({mode} {name}):\n{p.stderr[-3000:]}")
            runs.setdefault((mode, name, profile), []).append(json.loads(p.stdout.strip().splitlines()[-1]))

        for mode in modes:
            for _ in range(args.repeats):
                for name, opts in PAIR:
                    run(mode, name, opts, False)
            if args.profile:
                for name, opts in PAIR:
                    run(mode, name, opts, True)

    (ga, _), (npo, _) = PAIR
    print(
        f"model {Path(args.model).name}, forget batch {args.batch}, {args.steps} steps (median of steps "
        f"2..{args.steps}), {args.repeats} interleaved subprocess repeats, threads={args.threads}"
        + (", flush_denormal" if args.flush_denormal else "")
    )
    for mode in modes:
        a, b = runs[(mode, ga, False)], runs[(mode, npo, False)]
        med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
        pair = lambda k: statistics.median(y[k] / x[k] for x, y in zip(a, b))  # noqa: E731
        label = f"LoRA r={args.lora_r}" if mode == "lora" else "full FT"
        print(f"[{label}] npo vs grad_ascent")
        print(
            f"  step time      {med(b, 'step_s') * 1e3:8.1f} ms / {med(a, 'step_s') * 1e3:8.1f} ms = "
            f"{med(b, 'step_s') / med(a, 'step_s'):.3f}x (median of paired ratios {pair('step_s'):.3f}x)"
        )
        print(
            f"  step CPU time  {med(b, 'step_cpu_s') * 1e3:8.1f} ms / {med(a, 'step_cpu_s') * 1e3:8.1f} ms = "
            f"{med(b, 'step_cpu_s') / med(a, 'step_cpu_s'):.3f}x (median of paired ratios {pair('step_cpu_s'):.3f}x)"
        )
        print(
            f"  peak RSS incr. {med(b, 'peak_mb'):8.1f} MB / {med(a, 'peak_mb'):8.1f} MB = "
            f"{med(b, 'peak_mb') / med(a, 'peak_mb'):.3f}x (median of paired ratios {pair('peak_mb'):.3f}x)"
        )
        if args.profile:
            pa, pb = runs[(mode, ga, True)][0], runs[(mode, npo, True)][0]
            print(
                f"  torch alloc peak {pb['torch_peak_mb']:6.1f} MB / {pa['torch_peak_mb']:8.1f} MB = "
                f"{pb['torch_peak_mb'] / pa['torch_peak_mb']:.3f}x   (torch.profiler memory events, 1 run each)"
            )
        print(
            f"  first step     {med(b, 'first_s') * 1e3:8.1f} ms / {med(a, 'first_s') * 1e3:8.1f} ms "
            f"(allocates AdamW state; not in the step time)"
        )
        print(
            f"  npo reference precompute (once, before the loop, {args.forget_split}): {med(b, 'ref_s'):.2f} s, "
            f"peak RSS increase {med(b, 'ref_peak_mb'):.1f} MB"
        )


# --- b. evaluation throughput ------------------------------------------------------------------------------


def _naive_rows(model, tok, items, max_new_tokens: int, max_len: int = 512) -> list[dict]:
    """OpenUnlearning-style: per sample, one `generate` (ROUGE) and one forward pass per metric."""
    import torch
    from rouge_score import rouge_scorer

    from obliviate.models.encode import IGNORE, encode_pair, prompt_ids

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def forward(question, answer):  # a fresh teacher-forced pass: (log-softmax [n, V], targets [n]) on the answer
        ids, labels = encode_pair(tok, question, answer, max_len)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        y = torch.tensor(labels[1:])
        keep = y != IGNORE
        return torch.log_softmax(logits, -1)[keep], y[keep]

    def nll(question, answer):
        lp, y = forward(question, answer)
        return float(-lp[torch.arange(len(y)), y].mean())

    def token_lp(question, answer):
        lp, y = forward(question, answer)
        return lp[torch.arange(len(y)), y].tolist()

    def lowest_mean(x, k=0.4):
        x = sorted(x)
        return sum(x[: max(1, math.ceil(k * len(x)))]) / max(1, math.ceil(k * len(x)))

    rows = []
    for it in items:
        p = prompt_ids(tok, it.question)
        with torch.no_grad():
            g = model.generate(
                input_ids=torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        text = tok.decode(g[0, len(p) :], skip_special_tokens=True).strip()
        r = {
            "id": it.id,
            "answer": it.answer,
            "value": it.value,
            "generated": text,
            "rouge_l_recall": scorer.score(it.answer, text)["rougeL"].recall,
            "value_hit": bool(it.value) and it.value.lower() in text.lower(),
        }
        r["gt_loss"] = nll(it.question, it.answer)  # probability
        if it.paraphrased_answer:
            r["paraphrased_loss"] = nll(it.question, it.paraphrased_answer)  # paraphrase prob.
        r["perturbed_loss"] = [nll(it.question, a) for a in it.perturbed_answer]  # one per perturbed
        lps = token_lp(it.question, it.answer)  # MIA LOSS
        r["mia_loss"] = sum(lps) / len(lps)
        lps = token_lp(it.question, it.answer)  # MIA zlib
        r["mia_zlib"] = (sum(lps) / len(lps)) / len(zlib.compress(it.answer.encode("utf-8")))
        r["mia_mink"] = lowest_mean(token_lp(it.question, it.answer))  # MIA Min-K%
        lp, y = forward(it.question, it.answer)  # MIA Min-K%++
        p_ = lp.exp()
        mu = (p_ * lp).sum(-1)
        sigma = ((p_ * lp * lp).sum(-1) - mu * mu).clamp(min=1e-12).sqrt()
        r["mia_minkpp"] = lowest_mean(((lp[torch.arange(len(y)), y] - mu) / sigma).tolist())
        lp, y = forward(it.question, it.answer)  # exact memorisation
        r["exact_memorization"] = float((lp.argmax(-1) == y).float().mean())
        lp, y = forward(it.question, it.answer)  # extraction strength
        pred, tgt, n = lp.argmax(-1).tolist(), y.tolist(), len(y)
        r["extraction_strength"] = next(1 - k / n for k in range(n + 1) if pred[k:] == tgt[k:])
        rows.append(r)
    return rows


def _ours_per_sample(rows: list[dict]) -> list[dict]:
    """The same per-sample values, derived from score_model's rows with obliviate's own functions."""
    from obliviate.metrics.memorization import exact_memorization, extraction_strength
    from obliviate.metrics.mia import SCORES

    out = []
    for r in rows:
        d = {k: r[k] for k in ("rouge_l_recall", "value_hit", "gt_loss", "perturbed_loss")}
        if "paraphrased_loss" in r:
            d["paraphrased_loss"] = r["paraphrased_loss"]
        d.update({f"mia_{k}": f(r) for k, f in SCORES.items()})
        d["exact_memorization"] = exact_memorization(r["pred_ids"], r["target_ids"])
        d["extraction_strength"] = extraction_strength(r["pred_ids"], r["target_ids"])
        out.append(d)
    return out


def eval_bench(args) -> None:
    from obliviate.benchmarks.layouts import eval_data
    from obliviate.data.world import write_world
    from obliviate.engine.evaluate import score_model

    torch, model, tok = _setup(args)
    model.eval()
    if args.float64:
        model.double()
    with tempfile.TemporaryDirectory() as tmp:
        write_world(tmp)
        data = {s: items[: args.per_split] for s, items in eval_data(Path(tmp)).items()}
    n = sum(map(len, data.values()))
    kw = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    score_model(model, tok, {s: v[:2] for s, v in data.items()}, **kw)  # warm-up (allocator, kernels)
    _naive_rows(model, tok, data["forget"][:1], args.max_new_tokens)
    t_ours, t_naive, c_ours, c_naive = [], [], [], []
    for _ in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        ours = score_model(model, tok, data, **kw)
        t_ours.append(time.perf_counter() - t)
        c_ours.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        naive = {s: _naive_rows(model, tok, items, args.max_new_tokens) for s, items in data.items()}
        t_naive.append(time.perf_counter() - t)
        c_naive.append(time.process_time() - c)

    a = [x for s in data for x in _ours_per_sample(ours[s])]
    b = [x for s in data for x in naive[s]]
    gen_same = sum(x["generated"] == y["generated"] for s in data for x, y in zip(ours[s], naive[s]))
    print(
        f"model {Path(args.model).name}: {n} world QA items ({args.per_split} per split x {len(data)} splits), "
        f"max_new_tokens={args.max_new_tokens}, threads={args.threads}, {args.repeats} interleaved repeats"
    )
    mo, mn = statistics.median(t_ours), statistics.median(t_naive)
    co, cn = statistics.median(c_ours), statistics.median(c_naive)
    print(
        f"  score_model        {mo:7.2f} s  {n / mo:6.2f} samples/s   CPU {co:7.2f} s  (wall runs: "
        f"{', '.join(f'{x:.2f}' for x in t_ours)})"
    )
    print(
        f"  per-sample naive   {mn:7.2f} s  {n / mn:6.2f} samples/s   CPU {cn:7.2f} s  (wall runs: "
        f"{', '.join(f'{x:.2f}' for x in t_naive)})"
    )
    print(
        f"  speed-up {mn / mo:.2f}x wall, {cn / co:.2f}x CPU (median of paired wall ratios "
        f"{statistics.median(y / x for x, y in zip(t_ours, t_naive)):.2f}x); naive = 1 generate + "
        f"{1 + 1 + 3 + 4 + 2} forward passes per sample"
    )
    print(f"  greedy generations identical: {gen_same}/{n}")
    print("  max |ours - naive| per metric over all samples (and the max relative difference):")
    for k in a[0]:
        diffs, rel = [], []
        for x, y in zip(a, b):
            xs, ys = (x[k], y[k]) if isinstance(x[k], list) else ([x[k]], [y[k]])
            diffs += [abs(float(u) - float(v)) for u, v in zip(xs, ys)]
            rel += [abs(float(u) - float(v)) / max(abs(float(v)), 1e-12) for u, v in zip(xs, ys)]
        print(
            f"    {k:22s} {max(diffs):.2e}  (rel {max(rel):.1e})"
            + ("   <= 1e-6" if max(diffs) <= 1e-6 else "   > 1e-6")
        )


# --- c. batched generation --------------------------------------------------------------------------------


def generate_bench(args) -> None:
    from transformers import pipeline

    from obliviate.data.schema import load_qa
    from obliviate.data.world import write_world
    from obliviate.engine.generation import generate
    from obliviate.models.encode import prompt_ids

    torch, model, tok = _setup(args)
    model.eval()
    if args.float64:
        model.double()
    with tempfile.TemporaryDirectory() as tmp:
        write_world(tmp)
        items = load_qa(Path(tmp) / "forget10.jsonl") + load_qa(Path(tmp) / "retain_eval.jsonl")
    questions = [it.question for it in items[: args.prompts]]
    chats = [[{"role": "user", "content": q}] for q in questions]
    prompts = [prompt_ids(tok, q) for q in questions]
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    eos, mnt = tok.eos_token_id, args.max_new_tokens

    counted = []  # new tokens per call, from each call's own generate output (up to and including EOS)
    orig_generate = model.generate

    def counting_generate(*a, **k):
        out = orig_generate(*a, **k)
        seqs = out.sequences if hasattr(out, "sequences") else out
        T = k["input_ids"].shape[1] if "input_ids" in k else a[0].shape[1]
        for row in seqs[:, T:].tolist():
            counted.append(row.index(eos) + 1 if eos in row else len(row))
        return out

    model.generate = counting_generate

    def ours():
        return generate(model, tok, prompts, max_new_tokens=mnt, batch_size=args.batch_size)

    def theirs():
        out = pipe(chats, max_new_tokens=mnt, do_sample=False, return_full_text=False, batch_size=args.pipeline_batch)
        return [o[0]["generated_text"].strip() for o in out]

    generate(model, tok, prompts[:2], max_new_tokens=4)  # warm-up (allocator, kernels)
    pipe(chats[:2], max_new_tokens=4, do_sample=False, return_full_text=False)
    t = {"ours": [], "pipeline": []}
    cpu = {"ours": [], "pipeline": []}
    toks = {"ours": 0, "pipeline": 0}
    outs = {}
    for _ in range(args.repeats):
        for name, f in (("ours", ours), ("pipeline", theirs)):
            counted.clear()
            s, c = time.perf_counter(), time.process_time()
            outs[name] = f()
            t[name].append(time.perf_counter() - s)
            cpu[name].append(time.process_time() - c)
            toks[name] = sum(counted)
    model.generate = orig_generate
    same = sum(x == y for x, y in zip(outs["ours"], outs["pipeline"]))
    pipe_ids = [
        tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        for c in chats
    ]
    print(
        f"model {Path(args.model).name}: {len(prompts)} chat prompts x max_new_tokens={mnt}, greedy, "
        f"threads={args.threads}, {args.repeats} interleaved repeats; ours batch_size={args.batch_size}, "
        f"pipeline batch_size={args.pipeline_batch}"
    )
    print(
        f"  prompt token ids identical: {sum(list(x) == list(y) for x, y in zip(prompts, pipe_ids))}/{len(prompts)}; "
        f"outputs identical: {same}/{len(prompts)}"
    )
    for name in t:
        m = statistics.median(t[name])
        print(
            f"  {name:9s} {m:7.2f} s  {toks[name]:5d} new tokens  {toks[name] / m:7.1f} tokens/s   CPU "
            f"{statistics.median(cpu[name]):7.2f} s  (wall runs: {', '.join(f'{x:.2f}' for x in t[name])})"
        )
    r = statistics.median(t["pipeline"]) / statistics.median(t["ours"])
    rc = statistics.median(cpu["pipeline"]) / statistics.median(cpu["ours"])
    print(
        f"  speed-up {r:.2f}x wall, {rc:.2f}x CPU (median of paired wall ratios "
        f"{statistics.median(y / x for x, y in zip(t['ours'], t['pipeline'])):.2f}x)"
    )
    for i, (x, y) in enumerate(zip(outs["ours"], outs["pipeline"])):
        if x != y:
            print(f"  differs #{i}: ours {x!r}\n              pipeline {y!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=str(DEFAULT_MODEL), help="HF causal LM directory with a chat template")
    common.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")

    t = sub.add_parser("train", parents=[common], help="NPO vs GradAscent step time and memory")
    t.add_argument("--steps", type=int, default=5, help="training steps per run (step 1 is not timed)")
    t.add_argument("--batch", type=int, default=4, help="forget (and retain) batch size")
    t.add_argument("--repeats", type=int, default=2, help="interleaved GA/NPO subprocess pairs per mode")
    t.add_argument("--modes", default="lora,full", help="comma list of lora, full")
    t.add_argument("--lora-r", type=int, default=8)
    t.add_argument(
        "--forget-split",
        default="forget01",
        help="world forget split (forget01: 10 items, forget05: 50, forget10: 100); sets the size of "
        "NPO's reference pass, not the step cost",
    )
    t.add_argument(
        "--profile", action="store_true", help="also one torch.profiler run per method: peak of torch's CPU allocations"
    )
    t.add_argument(
        "--flush-denormal",
        action="store_true",
        help="torch.set_flush_denormal(True) in the workers (NPO's saturated gradients are subnormal)",
    )
    t.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    t.add_argument("--world", help=argparse.SUPPRESS)
    t.add_argument("--method", help=argparse.SUPPRESS)
    t.add_argument("--options", default="{}", help=argparse.SUPPRESS)

    e = sub.add_parser("eval", parents=[common], help="score_model vs a per-sample, per-metric evaluator")
    e.add_argument("--per-split", type=int, default=6, help="items per split (4 splits)")
    e.add_argument("--max-new-tokens", type=int, default=48, help="as score_model's default")
    e.add_argument("--batch-size", type=int, default=64, help="score_model batch size (its default)")
    e.add_argument("--repeats", type=int, default=1)
    e.add_argument(
        "--float64",
        action="store_true",
        help="run the model in float64: the metric agreement without fp32 rounding (slower)",
    )

    g = sub.add_parser("generate", parents=[common], help="generate vs transformers.pipeline")
    g.add_argument("--prompts", type=int, default=32)
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--batch-size", type=int, default=64, help="obliviate.engine.generation.generate batch size")
    g.add_argument("--pipeline-batch", type=int, default=1, help="pipeline batch_size (its default is 1)")
    g.add_argument("--repeats", type=int, default=3)

    args = ap.parse_args()
    if args.cmd == "train":
        (train_worker if args.worker else train_bench)(args)
    elif args.cmd == "eval":
        eval_bench(args)
    else:
        generate_bench(args)


if __name__ == "__main__":
    main()
