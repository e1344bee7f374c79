"""Refusal commands of the CLI: `align`, `refusal-eval`, `calibrate`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from obliviate.cli.common import (
    API_KEY_ENV_OPTION,
    BF16_OPTION,
    CONCURRENCY_OPTION,
    GRADIENT_CHECKPOINTING_OPTION,
    HARM_JUDGE_API_KEY_ENV_OPTION,
    HARM_JUDGE_LABEL_ROWS_OPTION,
    HARM_JUDGE_LABELS_OPTION,
    HARM_JUDGE_MAX_NEW_TOKENS_OPTION,
    HARM_JUDGE_MODEL_OPTION,
    HARM_JUDGE_OPTION,
    HARM_JUDGE_SERVED_MODEL_OPTION,
    MAX_BATCH_TOKENS_OPTION,
    SAMPLES_OPTION,
    SERVED_MODEL_OPTION,
    TEMPERATURE_OPTION,
    TOP_P_OPTION,
    UTILITY_LIMIT_OPTION,
    UTILITY_OPTION,
    UTILITY_TASKS_OPTION,
    echo_utility,
    named_runs,
    parse_options,
    set_threads,
)


def align(
    method: str = typer.Argument(..., help="see `obliviate ls refusal-methods`"),
    model: str = typer.Option(..., help="HF chat model directory to align (e.g. the unaligned target)"),
    out: Path = typer.Option(..., help="output model directory (never the input's)"),
    data: Optional[Path] = typer.Option(None, help="a world directory (policy_train.jsonl, train.jsonl, ...)"),
    harmful: List[str] = typer.Option(
        [], help="KIND:FILE of prompts to refuse (repeatable), e.g. advbench:harmful_behaviors.csv"
    ),
    refusals: Optional[Path] = typer.Option(None, help="one refusal per line (default: the shipped pool)"),
    harmful_responses: Optional[Path] = typer.Option(
        None, help="BeaverTails-like records (prompt, response): harmful prefixes for DeRTa / Qi et al."
    ),
    self_prefix: bool = typer.Option(
        False,
        "--self-prefix",
        help="harmful prefixes = the model's own greedy "
        "replies after each affirmative target (kept in OUT/generated.jsonl)",
    ),
    benign: List[str] = typer.Option([], help="KIND:FILE of benign prompts, answered by the model itself"),
    benign_sft: Optional[Path] = typer.Option(None, help="Alpaca-style records (instruction, input, output)"),
    max_prompts: Optional[int] = typer.Option(None, help="public data: at most N prompts per source"),
    exclude: List[str] = typer.Option(
        [], help="KIND:FILE: drop training prompts that nearly duplicate these (evaluation sets; word Jaccard >= 0.4)"
    ),
    reply_tokens: int = typer.Option(64, help="public data: length of self-generated replies"),
    steps: Optional[int] = typer.Option(None, help="override the method's step count"),
    lr: Optional[float] = typer.Option(None, help="override the method's learning rate"),
    option: List[str] = typer.Option([], help="method option KEY=VALUE (repeatable), e.g. rto=false"),
    batch_size: int = typer.Option(32, help="examples per part per step"),
    lora_r: int = typer.Option(0, help="> 0: train LoRA adapters of this rank, merged on save"),
    bf16: bool = BF16_OPTION,
    gradient_checkpointing: bool = GRADIENT_CHECKPOINTING_OPTION,
    max_batch_tokens: Optional[int] = MAX_BATCH_TOKENS_OPTION,
    no_chat_template: bool = typer.Option(
        False,
        "--no-chat-template",
        help="raw prompts (the question and a newline), for a model with or without a chat template",
    ),
    resume: bool = typer.Option(False, help="continue from OUT/checkpoint"),
    seed: int = typer.Option(0),
    utility: Optional[str] = UTILITY_OPTION,
    utility_tasks: Optional[Path] = UTILITY_TASKS_OPTION,
    utility_limit: int = UTILITY_LIMIT_OPTION,
    threads: Optional[int] = typer.Option(None),
):
    """Train refusals into MODEL with one refusal method (refusal_sft, derta, qi_augment, refusal_tokens, ...),
    on a world (--data) or on public-format files (--harmful KIND:FILE, ...)."""
    from obliviate.engine.utility import parse_utility
    from obliviate.refusal.run import run_align

    util = parse_utility(utility, utility_tasks, utility_limit)
    opts = parse_options(option) | ({"steps": steps} if steps is not None else {}) | ({"lr": lr} if lr else {})
    set_threads(threads)
    res = run_align(
        model,
        method,
        out,
        data=data,
        harmful=harmful,
        refusals=refusals,
        harmful_responses=harmful_responses,
        self_prefix=self_prefix,
        benign=benign,
        benign_sft=benign_sft,
        max_prompts=max_prompts,
        exclude=exclude,
        reply_tokens=reply_tokens,
        options=opts,
        batch_size=batch_size,
        lora_r=lora_r,
        bf16=bf16,
        gradient_checkpointing=gradient_checkpointing,
        max_batch_tokens=max_batch_tokens,
        no_chat_template=no_chat_template,
        resume=resume,
        seed=seed,
        utility=util,
    )
    typer.echo(f"{method}: {res.steps} steps in {res.seconds:.1f} s, final loss {res.history[-1]['loss']:.4f} -> {out}")
    echo_utility(out)


def refusal_eval_cmd(
    model: List[str] = typer.Option(
        ..., help="model directory or openai:URL (an endpoint, URL ending in /v1); repeat, or NAME=DIR to name runs"
    ),
    out: Path = typer.Option(..., help="writes results.json and samples.jsonl"),
    data: Optional[Path] = typer.Option(None, help="a world directory (policy_test*.jsonl, ...)"),
    harmful: List[str] = typer.Option(
        [], help="KIND:FILE of prompts to refuse (repeatable), e.g. harmbench:harmbench_behaviors_text_val.csv"
    ),
    benign: List[str] = typer.Option(
        [], help="KIND:FILE of prompts to answer (repeatable), e.g. xstest:xstest_prompts.csv"
    ),
    judges: Optional[str] = typer.Option(
        None,
        help="public sets: comma-separated judges (default: the strongest installed, see `obliviate judge --help`)",
    ),
    depths: str = typer.Option("5,10,20", help="public sets: prefill depths in tokens"),
    no_chat_template: bool = typer.Option(
        False,
        "--no-chat-template",
        help="raw prompts (the question and a newline), for a model with or without a chat template",
    ),
    tau: float = typer.Option(0.5, help="refusal-token models: refuse when p_refuse > tau"),
    tau_temperature: float = typer.Option(1.0, help="refusal-token models: softmax temperature of p_refuse"),
    limit: Optional[int] = typer.Option(None, help="at most N rows per evaluation set (quick look)"),
    max_new_tokens: int = typer.Option(48, help="reply length judged"),
    samples: int = SAMPLES_OPTION,
    temperature: Optional[float] = TEMPERATURE_OPTION,
    top_p: Optional[float] = TOP_P_OPTION,
    guard: List[Path] = typer.Option(
        [],
        "--guard",
        help="a guard directory (`obliviate guard fit`) applied to every model at generation (repeatable)",
    ),
    served_model: Optional[str] = SERVED_MODEL_OPTION,
    api_key_env: Optional[str] = API_KEY_ENV_OPTION,
    concurrency: int = CONCURRENCY_OPTION,
    tokenizer: Optional[Path] = typer.Option(
        None,
        help="openai:URL models: the served model's tokenizer directory, to send the first k answer tokens as a "
        "prefill (without it, prefill depths are skipped)",
    ),
    harm_judge: Optional[str] = HARM_JUDGE_OPTION,
    harm_judge_model: Optional[str] = HARM_JUDGE_MODEL_OPTION,
    harm_judge_served_model: Optional[str] = HARM_JUDGE_SERVED_MODEL_OPTION,
    harm_judge_api_key_env: Optional[str] = HARM_JUDGE_API_KEY_ENV_OPTION,
    harm_judge_labels: Optional[Path] = HARM_JUDGE_LABELS_OPTION,
    harm_judge_label_rows: Optional[int] = HARM_JUDGE_LABEL_ROWS_OPTION,
    harm_judge_max_new_tokens: Optional[int] = HARM_JUDGE_MAX_NEW_TOKENS_OPTION,
    seed: int = typer.Option(0, help="the world's split, and the seed of reply j: seed + j when sampling"),
    utility: Optional[str] = UTILITY_OPTION,
    utility_tasks: Optional[Path] = UTILITY_TASKS_OPTION,
    utility_limit: int = UTILITY_LIMIT_OPTION,
    threads: Optional[int] = typer.Option(None),
):
    """Refusal, over-refusal and refusal at prefill depths: on a world (--data), or on public prompt sets
    (--harmful / --benign KIND:FILE, per category), for any chat model, local or served (openai:URL)."""
    runs = named_runs(model)
    from obliviate.engine.utility import parse_utility
    from obliviate.judges.harm import harm_judge_option

    util = parse_utility(utility, utility_tasks, utility_limit)
    from obliviate.refusal.run import run_refusal_eval

    harm = harm_judge_option(
        harm_judge,
        harm_judge_model,
        harm_judge_served_model,
        harm_judge_api_key_env,
        harm_judge_labels,
        harm_judge_label_rows,
        harm_judge_max_new_tokens,
    )
    set_threads(threads)
    run_refusal_eval(
        runs,
        out,
        data=data,
        harmful=harmful,
        benign=benign,
        judges=judges.split(",") if judges else None,
        depths=depths,
        no_chat_template=no_chat_template,
        tau=tau,
        tau_temperature=tau_temperature,
        samples=samples,
        temperature=temperature,
        top_p=top_p,
        limit=limit,
        max_new_tokens=max_new_tokens,
        guards=guard,
        seed=seed,
        log=typer.echo,
        served_model=served_model,
        api_key_env=api_key_env,
        concurrency=concurrency,
        tokenizer=tokenizer,
        harm_judge=harm,
        utility=util,
    )
    typer.echo(f"wrote {out}/results.json, samples.jsonl")
    from obliviate.report.html import write_beside  # OUT/report.html; a failed report only warns

    write_beside(out)


def calibrate(
    model: str = typer.Argument(..., help="a model trained with `obliviate align refusal_tokens`"),
    data: Path = typer.Option(..., help="directory with the policy split to calibrate on"),
    out: Path = typer.Option(..., help="writes calibration.json and calibration.png"),
    split: str = typer.Option("policy_test", help="policy split (harmful + benign rows)"),
    taus: Optional[str] = typer.Option(None, help="comma-separated thresholds in [0, 1]"),
    temperature: float = typer.Option(1.0, help="softmax temperature of p_refuse"),
    limit: Optional[int] = typer.Option(None, help="at most N rows (quick look)"),
    threads: Optional[int] = typer.Option(None),
):
    """Sweep the refusal-token threshold tau: refusal rate vs over-refusal rate (JSON + PNG)."""
    from obliviate.refusal.calibrate import run_calibrate

    set_threads(threads)
    curve = run_calibrate(model, data, out, split=split, taus=taus, temperature=temperature, limit=limit)
    for t, r, v in zip(curve["tau"], curve["refusal_rate"], curve["over_refusal_rate"]):
        typer.echo(f"tau {t:<6g} refusal {r:.3f}  over-refusal {v:.3f}")
    typer.echo(f"wrote {out}/calibration.json, calibration.png")
