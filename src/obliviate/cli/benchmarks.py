"""Benchmark-format commands: `muse`, `muse-eval`, `wmdp`, `tofu-score`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from obliviate.cli.common import set_threads
from obliviate.core.errors import UsageError


def muse(
    out: Path = typer.Option(Path("runs/muse"), help="writes muse.json"),
    seed: int = typer.Option(0),
    methods: Optional[str] = typer.Option(
        None, help="comma-separated methods, or 'all' (default: the six demo methods)"
    ),
    finetune_steps: int = typer.Option(300, help="steps to train the target and the oracle"),
    threads: Optional[int] = typer.Option(None),
):
    """MUSE-style six-way evaluation (VerbMem, KnowMem, PrivLeak, utility, scalability, sustainability)."""
    from obliviate.core.outputs import check_output

    check_output(out, "muse")
    from obliviate.demos.muse import run_muse

    set_threads(threads)
    run_muse(out, seed=seed, methods=methods.split(",") if methods else None, finetune_steps=finetune_steps)


def wmdp(
    model: str = typer.Option(..., help="HF model directory"),
    data: Path = typer.Option(..., help="multiple-choice JSON/JSONL: question, choices, answer (index)"),
    mode: str = typer.Option("letter", help="'letter' (lm-eval style) or 'text' (choice log-likelihood)"),
    threads: Optional[int] = typer.Option(None),
):
    """WMDP-style multiple-choice accuracy, scored by choice log-likelihood (chance = 1 / number of choices)."""
    from obliviate.benchmarks.wmdp import load_mc, mc_accuracy
    from obliviate.models.load import load_model

    set_threads(threads)
    if mode not in ("letter", "text"):
        raise UsageError(f"unknown --mode {mode!r}; use 'letter' or 'text'")
    rows = load_mc(data)
    net, tok = load_model(model, require_chat_template=False)  # raw text: a base model is fine
    acc = mc_accuracy(net, tok, rows, mode)
    typer.echo(f"accuracy {acc:.4f} on {len(rows)} questions ({mode} scoring)")


def muse_eval(
    model: str = typer.Option(..., help="HF model directory (a base model is fine: no chat template)"),
    data: Path = typer.Option(..., help="MUSE directory: verbmem/, knowmem/, privleak/ (see docs/data-formats.md)"),
    oracle: Optional[str] = typer.Option(None, help="the retrained model, for PrivLeak"),
    oracle_auc: Optional[float] = typer.Option(None, help="or the retrained model's Min-K% AUC"),
    limit: Optional[int] = typer.Option(None, help="use the first N rows of each split"),
    as_json: bool = typer.Option(False, "--json"),
    threads: Optional[int] = typer.Option(None),
):
    """MUSE C1-C4 on a real MUSE-News / MUSE-Books directory: VerbMem, KnowMem forget/retain, PrivLeak."""
    import json

    from obliviate.benchmarks.muse import mink_auc
    from obliviate.benchmarks.muse_data import evaluate_muse_dir, load_split
    from obliviate.models.load import load_model

    set_threads(threads)
    if oracle and oracle_auc is not None:
        raise UsageError("give --oracle or --oracle-auc, not both")
    for subset, split in (
        ("verbmem", "forget"),
        ("knowmem", "forget_qa"),
        ("knowmem", "retain_qa"),
        ("privleak", "forget"),
        ("privleak", "holdout"),
    ):
        load_split(data, subset, split)  # every file checked before a model is loaded
    if oracle:
        net, tok = load_model(oracle, require_chat_template=False)
        oracle_auc = mink_auc(
            net, tok, load_split(data, "privleak", "forget")[:limit], load_split(data, "privleak", "holdout")[:limit]
        )
    net, tok = load_model(model, require_chat_template=False)
    result = evaluate_muse_dir(net, tok, data, oracle_auc, limit)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        for k, v in result.items():
            typer.echo(f"{k:16s} {v:.4f}")


def tofu_score(
    logs: Path = typer.Argument(..., help="TOFU eval_log_aggregated.json of the model"),
    oracle: Optional[Path] = typer.Option(None, help="the retain-only oracle's aggregated log"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
):
    """Model utility, forget quality and the 12 components of published TOFU logs, as TOFU aggregates them."""
    import json

    from obliviate.benchmarks.tofu_logs import score

    result = score(logs, oracle)
    if as_json:
        typer.echo(json.dumps(result))
        return
    for key, value in result.items():
        typer.echo(f"{key:24s} {value:.6g}")
