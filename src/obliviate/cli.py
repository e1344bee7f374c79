"""The `obliviate` command line. Heavy imports (torch, transformers) happen inside commands, so --help is fast.

Exit codes: 0 success, 2 bad input or usage (one line on stderr, no traceback), 1 internal error.
"""

from __future__ import annotations

import os
import sys
import time

_STARTED = time.perf_counter()  # the demo reports wall time from process start, imports included
from pathlib import Path
from typing import List, Optional

import typer

from obliviate.errors import UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make a generative model forget what it must, and prove it.")


def _threads(n: Optional[int]) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def _parse_options(options: list[str]) -> dict:
    out = {}
    for o in options:
        if "=" not in o:
            raise UsageError(f"--option expects KEY=VALUE, got {o!r}")
        k, v = o.split("=", 1)
        out[k.strip()] = v.strip()
    return out


@app.command()
def world(out: Path = typer.Option(..., help="directory to write the world's JSONL splits into"),
          seed: int = typer.Option(0, help="same seed, byte-identical files"),
          people: int = typer.Option(200, help="fictitious people trained on (5 QA each)")):
    """Write the built-in fictitious world (TOFU-style QA splits) as JSONL."""
    from obliviate.data.world import WorldSpec, write_world
    from obliviate.pipeline import fresh_output

    try:
        spec = WorldSpec(seed=seed, n_people=people)
    except ValueError as e:
        raise UsageError(str(e)) from None
    with fresh_output(out) as o:
        manifest = write_world(o, spec)
    for name, s in manifest["splits"].items():
        typer.echo(f"{name:12s} {s['n']:5d} items")
    typer.echo(f"wrote {out}")


@app.command()
def finetune(data: Path = typer.Option(..., help="world directory (from `obliviate world`)"),
             out: Path = typer.Option(..., help="writes OUT/target and OUT/oracle (HF model directories)"),
             forget_split: str = typer.Option("forget10", help="the split the oracle never sees"),
             model: Optional[str] = typer.Option(None, help="start from this HF model instead of a tiny one"),
             steps: int = typer.Option(300, help="optimiser steps per model"),
             lr: float = typer.Option(3e-3, help="peak learning rate"),
             batch_size: int = typer.Option(100),
             only: Optional[str] = typer.Option(None, help="train only 'target' or 'oracle'"),
             seed: int = typer.Option(0),
             threads: Optional[int] = typer.Option(None, help="torch CPU threads")):
    """Train the target (all training data) and the oracle (everything but the forget split)."""
    from obliviate.pipeline import fresh_output, train_world_models

    if only not in (None, "target", "oracle"):
        raise UsageError(f"--only must be 'target' or 'oracle', got {only!r}")
    _threads(threads)
    with fresh_output(out) as o:
        for name, secs in train_world_models(data, o, forget_split=forget_split, base=model, steps=steps, lr=lr,
                                             batch_size=batch_size, seed=seed, only=only).items():
            typer.echo(f"{name}: trained in {secs:.1f} s -> {o / name}")


@app.command()
def unlearn(model: str = typer.Option(..., help="HF model directory (or hub id when online) to unlearn from"),
            forget: Optional[Path] = typer.Option(None, help="forget split (JSONL or TOFU .json)"),
            retain: Optional[Path] = typer.Option(None, help="retain split (JSONL or TOFU .json)"),
            suite: Optional[str] = typer.Option(None, help="instead of --forget/--retain: take them from --data"),
            data: Optional[Path] = typer.Option(None, help="data directory of --suite (world, tofu or muse)"),
            forget_split: str = typer.Option("forget10", help="with --suite: forget01 / forget05 / forget10"),
            method: str = typer.Option(..., help="see `obliviate ls methods`"),
            out: Path = typer.Option(..., help="output model directory (never the input's)"),
            resume: bool = typer.Option(False, help="continue from OUT/checkpoint"),
            steps: Optional[int] = typer.Option(None, help="override the method's tuned step count"),
            lr: Optional[float] = typer.Option(None, help="override the method's tuned learning rate"),
            option: List[str] = typer.Option([], help="method option KEY=VALUE (repeatable), e.g. beta=0.2"),
            forget_batch_size: int = typer.Option(32), retain_batch_size: int = typer.Option(32),
            checkpoint_every: int = typer.Option(25, help="steps between checkpoints; 0 disables"),
            lora_r: int = typer.Option(0, help="> 0: train LoRA adapters of this rank, merged on save"),
            idk: Optional[Path] = typer.Option(None, help="'I don't know' answer pool (one per line)"),
            seed: int = typer.Option(0), threads: Optional[int] = typer.Option(None)):
    """Unlearn FORGET from MODEL while keeping RETAIN, with one registered method."""
    from obliviate.pipeline import run_unlearn

    text = False
    if suite or data:
        if not (suite and data) or forget or retain:
            raise UsageError("give either --forget and --retain, or --suite and --data")
        from obliviate.suites import SUITES

        text = SUITES.get(suite).text
        forget, retain = SUITES.get(suite).train_paths(data, forget_split)
    elif not (forget and retain):
        raise UsageError("give --forget and --retain (or --suite and --data)")
    opts = _parse_options(option)
    if steps is not None:
        opts["steps"] = steps
    if lr is not None:
        opts["lr"] = lr
    _threads(threads)
    res = run_unlearn(model, forget, retain, method, out, options=opts, resume=resume, seed=seed, idk=idk,
                      forget_batch_size=forget_batch_size, retain_batch_size=retain_batch_size,
                      checkpoint_every=checkpoint_every, lora_r=lora_r, text=text)
    typer.echo(f"{method}: {res.steps} steps in {res.seconds:.1f} s, final loss {res.history[-1]['loss']:.4f} "
               f"-> {out}")


@app.command("eval")
def eval_cmd(model: List[str] = typer.Option(..., help="model directory; repeat, or NAME=DIR to name runs"),
             data: Path = typer.Option(..., help="world-shaped data directory"),
             out: Path = typer.Option(..., help="writes results.json, samples.jsonl, report.md"),
             oracle: Optional[str] = typer.Option(None, help="oracle model directory (forget quality, privleak)"),
             forget_split: str = typer.Option("forget10"),
             suite: str = typer.Option("world", help="how to read --data: world or tofu"),
             threads: Optional[int] = typer.Option(None)):
    """Evaluate models on the forget / retain / world-facts / holdout splits."""
    from obliviate.pipeline import run_eval

    _threads(threads)
    runs = {}
    for m in model:
        name, path = m.split("=", 1) if "=" in m and not Path(m).exists() else (Path(m).name, m)
        runs[name] = path
    doc = run_eval(runs, data, out, oracle=oracle, forget_split=forget_split, suite=suite)
    from obliviate.report.markdown import table

    typer.echo(table(doc))


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), help="output directory"),
         seed: int = typer.Option(0),
         methods: Optional[str] = typer.Option(None, help="comma-separated methods, or 'all' (default: the "
                                               "six TOFU/NPO baselines, which fit the 2-minute budget)"),
         suite: str = typer.Option("world", help="world (unlearning) or refusal (refusal methods)"),
         threads: Optional[int] = typer.Option(None)):
    """World -> target + oracle -> methods on forget10 -> evaluation, table and report.

    With --suite refusal: world -> unaligned target -> every refusal method -> refusal at depth, over-refusal,
    utility, a fine-tuning attack -> results.json and refusal_depth.png."""
    _threads(threads)
    meths = methods.split(",") if methods else None
    if suite == "refusal":
        from obliviate.suites.refusal_demo import run_refusal_demo

        run_refusal_demo(out, seed=seed, methods=meths, started=_STARTED)
        return
    if suite != "world":
        raise UsageError(f"unknown demo suite {suite!r}; use 'world' or 'refusal'")
    from obliviate.demo import run_demo

    run_demo(out, seed=seed, methods=meths, started=_STARTED)


@app.command("ls")
def ls(what: str = typer.Argument(..., help="methods | refusal-methods | attacks | metrics | suites")):
    """List registered methods, refusal methods, attacks, metrics or suites, one per line."""
    if what == "attacks":
        from obliviate.attacks import ATTACKS

        for name, cls in ATTACKS.items():
            typer.echo(f"{name:18s} {','.join(cls.suites):8s} {cls.description}")
    elif what == "suites":
        from obliviate.suites import SUITES

        for name, s in SUITES.items():
            typer.echo(f"{name:8s} {s.description}")
    elif what in ("methods", "refusal-methods"):
        from dataclasses import fields

        from obliviate.methods import METHODS
        from obliviate.refusal import REFUSAL_METHODS

        for name, cls in (METHODS if what == "methods" else REFUSAL_METHODS).items():
            opts = ", ".join(f"{f.name}={f.default}" for f in fields(cls))
            typer.echo(f"{name:12s} {opts}")
    elif what == "metrics":
        from obliviate.metrics import METRICS

        arrow = {True: "higher", False: "lower", None: "oracle"}
        for name, m in METRICS.items():
            typer.echo(f"{name:28s} {arrow[m.higher_is_better]:6s} {m.description}")
    else:
        raise UsageError(f"unknown listing {what!r}; use 'methods', 'refusal-methods', 'attacks', 'metrics' or 'suites'")


@app.command()
def sweep(method: str = typer.Option(..., help="see `obliviate ls methods`"),
          grid: str = typer.Option(..., help="space-separated KEY=V1,V2,... e.g. 'lr=1e-4,3e-4 beta=0.05,0.1'"),
          model: str = typer.Option(..., help="the target model directory"),
          oracle: str = typer.Option(..., help="the oracle model directory"),
          data: Path = typer.Option(..., help="world directory"),
          out: Path = typer.Option(..., help="writes OUT/sweep.json"),
          forget_split: str = typer.Option("forget10"),
          maximize: str = typer.Option("forget_quality", help="metric to maximise"),
          min_utility_ratio: float = typer.Option(0.9, help="constraint: utility >= this x the target's"),
          idk: Optional[Path] = typer.Option(None), seed: int = typer.Option(0),
          threads: Optional[int] = typer.Option(None)):
    """Grid-search one method's options; pick the best point by an explicit criterion."""
    from obliviate.pipeline import check_out_not_input
    from obliviate.sweep import run_sweep

    _threads(threads)
    check_out_not_input(out, model, oracle)
    run_sweep(method, grid, model=model, oracle=oracle, data=data, out=out, forget_split=forget_split, seed=seed,
              maximize=maximize, min_utility_ratio=min_utility_ratio, idk=idk)


@app.command()
def bench(out: Path = typer.Option(Path("runs/bench"), help="writes leaderboard.json and pareto.png"),
          seeds: str = typer.Option("0,1", help="comma-separated seeds (a fresh world and models per seed)"),
          splits: str = typer.Option("forget01,forget05,forget10"),
          methods: Optional[str] = typer.Option(None, help="comma-separated subset (default: all)"),
          finetune_steps: int = typer.Option(300, help="steps to train each target / oracle"),
          people: int = typer.Option(200, help="people in each seed's world"),
          resume: bool = typer.Option(False, help="continue an interrupted bench in OUT"),
          threads: Optional[int] = typer.Option(None)):
    """The leaderboard: every method x forget split x seed on the built-in world, mean ± std."""
    from obliviate.leaderboard import run_bench

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    if not seed_list:
        raise UsageError("--seeds is empty")
    _threads(threads)
    run_bench(out, seeds=seed_list, splits=[s.strip() for s in splits.split(",") if s.strip()],
              methods=methods.split(",") if methods else None, finetune_steps=finetune_steps, people=people,
              resume=resume)


@app.command()
def muse(out: Path = typer.Option(Path("runs/muse"), help="writes muse.json"),
         seed: int = typer.Option(0),
         methods: Optional[str] = typer.Option(None, help="comma-separated methods, or 'all' (default: the six "
                                                        "demo methods)"),
         finetune_steps: int = typer.Option(300, help="steps to train the target and the oracle"),
         threads: Optional[int] = typer.Option(None)):
    """MUSE-style six-way evaluation (VerbMem, KnowMem, PrivLeak, utility, scalability, sustainability)."""
    from obliviate.suites.muse import run_muse

    _threads(threads)
    run_muse(out, seed=seed, methods=methods.split(",") if methods else None, finetune_steps=finetune_steps)


@app.command()
def wmdp(model: str = typer.Option(..., help="HF model directory"),
         data: Path = typer.Option(..., help="multiple-choice JSON/JSONL: question, choices, answer (index)"),
         mode: str = typer.Option("letter", help="'letter' (lm-eval style) or 'text' (choice log-likelihood)"),
         threads: Optional[int] = typer.Option(None)):
    """WMDP-style multiple-choice accuracy, scored by choice log-likelihood (chance = 1 / number of choices)."""
    from obliviate.models.load import load_model
    from obliviate.suites.wmdp import load_mc, mc_accuracy

    _threads(threads)
    if mode not in ("letter", "text"):
        raise UsageError(f"unknown --mode {mode!r}; use 'letter' or 'text'")
    rows = load_mc(data)
    net, tok = load_model(model)
    acc = mc_accuracy(net, tok, rows, mode)
    typer.echo(f"accuracy {acc:.4f} on {len(rows)} questions ({mode} scoring)")


@app.command("muse-eval")
def muse_eval(model: str = typer.Option(..., help="HF model directory (a base model is fine: no chat template)"),
              data: Path = typer.Option(..., help="MUSE directory: verbmem/, knowmem/, privleak/ (see README)"),
              oracle: Optional[str] = typer.Option(None, help="the retrained model, for PrivLeak"),
              oracle_auc: Optional[float] = typer.Option(None, help="or the retrained model's Min-K% AUC"),
              limit: Optional[int] = typer.Option(None, help="use the first N rows of each split"),
              as_json: bool = typer.Option(False, "--json"), threads: Optional[int] = typer.Option(None)):
    """MUSE C1-C4 on a real MUSE-News / MUSE-Books directory: VerbMem, KnowMem forget/retain, PrivLeak."""
    import json

    from obliviate.models.load import load_model
    from obliviate.suites.muse import mink_auc
    from obliviate.suites.muse_data import evaluate_muse_dir, load_split

    _threads(threads)
    if oracle and oracle_auc is not None:
        raise UsageError("give --oracle or --oracle-auc, not both")
    for subset, split in (("verbmem", "forget"), ("knowmem", "forget_qa"), ("knowmem", "retain_qa"),
                          ("privleak", "forget"), ("privleak", "holdout")):
        load_split(data, subset, split)  # every file checked before a model is loaded
    if oracle:
        net, tok = load_model(oracle, require_chat_template=False)
        oracle_auc = mink_auc(net, tok, load_split(data, "privleak", "forget")[:limit],
                              load_split(data, "privleak", "holdout")[:limit])
    net, tok = load_model(model, require_chat_template=False)
    result = evaluate_muse_dir(net, tok, data, oracle_auc, limit)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        for k, v in result.items():
            typer.echo(f"{k:16s} {v:.4f}")


@app.command()
def prompts(kind: str = typer.Argument(..., help="xstest | harmbench | jailbreakbench | advbench | orbench | coconot"),
            file: Path = typer.Argument(..., help="the prompt set's file, as published"),
            out: Path = typer.Option(..., help="JSONL in obliviate's prompt schema")):
    """Convert a public refusal / jailbreak prompt set into obliviate's prompt schema (JSONL)."""
    from collections import Counter

    from obliviate.data.prompts import load_prompts
    from obliviate.data.schema import write_jsonl

    rows = load_prompts(kind, file)
    if out.exists():
        raise UsageError(f"{out} exists; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, rows)
    counts = Counter(r["label"] for r in rows)
    typer.echo(f"{len(rows)} prompts ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}) -> {out}")


@app.command("tofu-score")
def tofu_score(logs: Path = typer.Argument(..., help="TOFU eval_log_aggregated.json of the model"),
               oracle: Optional[Path] = typer.Option(None, help="the retain-only oracle's aggregated log"),
               as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Model utility, forget quality and the 12 components of published TOFU logs, as TOFU aggregates them."""
    import json

    from obliviate.suites.tofu_logs import score

    result = score(logs, oracle)
    if as_json:
        typer.echo(json.dumps(result))
        return
    for key, value in result.items():
        typer.echo(f"{key:24s} {value:.6g}")


@app.command()
def env():
    """Print versions, threads and the device obliviate would use (paste it into bug reports)."""
    import platform

    import torch

    from obliviate import __version__

    typer.echo(f"obliviate    {__version__}")
    typer.echo(f"python       {platform.python_version()} ({platform.machine()})")
    for mod in ("torch", "transformers", "tokenizers", "peft", "accelerate"):
        try:
            typer.echo(f"{mod:12s} {__import__(mod).__version__}")
        except ImportError:
            typer.echo(f"{mod:12s} not installed")
    typer.echo(f"threads      {torch.get_num_threads()}")
    cuda = torch.cuda.is_available()
    typer.echo(f"device       {torch.cuda.get_device_name(0) if cuda else 'cpu'}")
    typer.echo(f"hub offline  {os.environ.get('HF_HUB_OFFLINE', '0') not in ('', '0')}")


from obliviate import cli_audit, cli_judge, cli_refusal  # noqa: E402,F401  (register their commands on `app`)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(standalone_mode=False)
    except UsageError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except Exception as e:  # click's own usage errors keep their exit code 2
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
