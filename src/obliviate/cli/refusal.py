"""Refusal commands of the CLI: `align`, `refusal-eval`, `calibrate`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from obliviate.cli.common import named_runs, parse_options, set_threads
from obliviate.errors import UsageError
from obliviate.models.load import check_model_dir


def align(method: str = typer.Argument(..., help="see `obliviate ls refusal-methods`"),
          model: str = typer.Option(..., help="HF chat model directory to align (e.g. the unaligned target)"),
          data: Path = typer.Option(..., help="directory with policy_train.jsonl, train.jsonl, holdout.jsonl"),
          out: Path = typer.Option(..., help="output model directory (never the input's)"),
          steps: Optional[int] = typer.Option(None, help="override the method's step count"),
          lr: Optional[float] = typer.Option(None, help="override the method's learning rate"),
          option: List[str] = typer.Option([], help="method option KEY=VALUE (repeatable), e.g. rto=false"),
          batch_size: int = typer.Option(32, help="examples per part per step"),
          lora_r: int = typer.Option(0, help="> 0: train LoRA adapters of this rank, merged on save"),
          resume: bool = typer.Option(False, help="continue from OUT/checkpoint"),
          seed: int = typer.Option(0), threads: Optional[int] = typer.Option(None)):
    """Train refusals into MODEL with one refusal method (refusal_sft, derta, qi_augment, refusal_tokens, ...)."""
    from obliviate.models.load import load_model, save_model
    from obliviate.pipeline import check_out_not_input, fresh_output, write_json
    from obliviate.refusal import REFUSAL_METHODS
    from obliviate.suites.refusal import align as run_align
    from obliviate.suites.refusal import refusal_data

    cls = REFUSAL_METHODS.get(method)
    opts = parse_options(option) | ({"steps": steps} if steps is not None else {}) | ({"lr": lr} if lr else {})
    meth = cls.from_options(opts)
    data_, _ = refusal_data(data, seed)
    check_out_not_input(out, model)
    check_model_dir(model)
    if resume and (Path(out) / "train_log.json").is_file():
        raise UsageError(f"{out} holds a finished run; nothing to resume")
    set_threads(threads)
    net, tok = load_model(model, require_chat_template=True)
    with fresh_output(out, resume=resume) as o:
        write_json(o / "align.json", {"model": model, "data": str(data), "method": method, "options": meth.__dict__,
                                      "seed": seed})
        net, tok, res = run_align(net, tok, meth, data_, seed=seed, out=o, resume=resume, lora_r=lora_r,
                                  batch_size=batch_size)
        save_model(net, tok, o)
        write_json(o / "train_log.json", {"steps": res.steps, "seconds": res.seconds, "history": res.history})
        import shutil

        shutil.rmtree(o / "checkpoint", ignore_errors=True)
    typer.echo(f"{method}: {res.steps} steps in {res.seconds:.1f} s, final loss {res.history[-1]['loss']:.4f} -> {out}")


def refusal_eval_cmd(model: List[str] = typer.Option(..., help="model directory; repeat, or NAME=DIR to name runs"),
                     data: Path = typer.Option(..., help="directory with policy_test*.jsonl, train.jsonl, holdout"),
                     out: Path = typer.Option(..., help="writes results.json and samples.jsonl"),
                     tau: float = typer.Option(0.5, help="refusal-token models: refuse when p_refuse > tau"),
                     temperature: float = typer.Option(1.0, help="refusal-token models: softmax temperature"),
                     limit: Optional[int] = typer.Option(None, help="at most N rows per evaluation set (quick look)"),
                     max_new_tokens: int = typer.Option(48, help="reply length judged"),
                     seed: int = typer.Option(0), threads: Optional[int] = typer.Option(None)):
    """Refusal, over-refusal, refusal at prefill depths 5/10/20/40, held-out objects, SARR, utility."""
    from obliviate.data.schema import write_jsonl
    from obliviate.models.load import load_model
    from obliviate.pipeline import check_out_not_input, fresh_output, results_document, write_json
    from obliviate.refusal.refusal_tokens import ThresholdGenerator, control_ids
    from obliviate.suites.refusal import evaluate, refusal_data

    runs = named_runs(model)
    for path in runs.values():
        check_out_not_input(out, path)
        check_model_dir(path)
    _, eval_people = refusal_data(data, seed)
    gen = ThresholdGenerator(tau, temperature)
    set_threads(threads)
    with fresh_output(out) as o:
        results, samples, positions = {}, [], {}
        for name, path in runs.items():
            net, tok = load_model(path, require_chat_template=True)
            has_tokens = control_ids(tok)[0] is not None
            m, s, d = evaluate(net, tok, data, eval_people, seed, gen if has_tokens else None, max_new_tokens, limit)
            results[name], positions[name] = m, d
            samples += [x | {"run": name} for x in s]
            typer.echo(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items() if v is not None))
        doc = results_document({"suite": "refusal", "data": str(data), "models": runs, "tau": tau,
                                "temperature": temperature, "limit": limit, "max_new_tokens": max_new_tokens},
                               results, {}, {"refusal_positions": positions})
        write_jsonl(o / "samples.jsonl", samples)
        write_json(o / "results.json", doc)
    typer.echo(f"wrote {out}/results.json, samples.jsonl")


def calibrate(model: str = typer.Argument(..., help="a model trained with `obliviate align refusal_tokens`"),
              data: Path = typer.Option(..., help="directory with the policy split to calibrate on"),
              out: Path = typer.Option(..., help="writes calibration.json and calibration.png"),
              split: str = typer.Option("policy_test", help="policy split (harmful + benign rows)"),
              taus: Optional[str] = typer.Option(None, help="comma-separated thresholds in [0, 1]"),
              temperature: float = typer.Option(1.0, help="softmax temperature of p_refuse"),
              limit: Optional[int] = typer.Option(None, help="at most N rows (quick look)"),
              threads: Optional[int] = typer.Option(None)):
    """Sweep the refusal-token threshold tau: refusal rate vs over-refusal rate (JSON + PNG)."""
    from obliviate.calibrate import parse_taus, plot, sweep
    from obliviate.models.load import load_model
    from obliviate.pipeline import check_out_not_input, fresh_output, write_json
    from obliviate.refusal.refusal_tokens import control_ids
    from obliviate.suites.refusal import policy_rows

    tau_list = parse_taus(taus)
    if temperature <= 0:
        raise UsageError(f"--temperature must be > 0, got {temperature}")
    if limit is not None and limit < 1:
        raise UsageError("--limit must be >= 1")
    rows = policy_rows(data, split)
    check_out_not_input(out, model)
    check_model_dir(model)
    set_threads(threads)
    if limit:
        from obliviate.suites.refusal import subsample

        rows = subsample(rows, limit)
    net, tok = load_model(model, require_chat_template=True)
    if control_ids(tok)[0] is None:
        raise UsageError(f"{model} has no refusal tokens; train one with `obliviate align refusal_tokens`")
    with fresh_output(out) as o:
        curve = sweep(net, tok, rows, tau_list, temperature) | {"model": model, "split": split}
        write_json(o / "calibration.json", curve)
        plot(curve, o / "calibration.png")
    for t, r, v in zip(curve["tau"], curve["refusal_rate"], curve["over_refusal_rate"]):
        typer.echo(f"tau {t:<6g} refusal {r:.3f}  over-refusal {v:.3f}")
    typer.echo(f"wrote {out}/calibration.json, calibration.png")
