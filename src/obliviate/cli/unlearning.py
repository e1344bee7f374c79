"""Unlearning commands: `finetune`, `unlearn`, `eval`, `sweep`, `bench`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from obliviate.cli.common import (
    BF16_OPTION,
    GRADIENT_CHECKPOINTING_OPTION,
    MAX_BATCH_TOKENS_OPTION,
    NO_CHAT_TEMPLATE_OPTION,
    PROMPT_TEMPLATE_OPTION,
    SAMPLES_OPTION,
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
from obliviate.core.errors import UsageError


def finetune(
    data: Path = typer.Option(..., help="world directory (from `obliviate world`)"),
    out: Path = typer.Option(..., help="writes OUT/target and OUT/oracle (HF model directories)"),
    forget_split: str = typer.Option("forget10", help="the split the oracle never sees"),
    model: Optional[str] = typer.Option(None, help="start from this HF model instead of a tiny one"),
    steps: int = typer.Option(300, help="optimiser steps per model"),
    lr: float = typer.Option(3e-3, help="peak learning rate"),
    batch_size: int = typer.Option(100),
    only: Optional[str] = typer.Option(None, help="train only 'target' or 'oracle' (every oracle)"),
    oracles: int = typer.Option(
        1, help="K oracles: OUT/oracle (seed --seed) plus OUT/oracle_seed{seed+j}, j = 1..K-1 (KLoM's distribution)"
    ),
    dp_epsilon: Optional[float] = typer.Option(
        None, help="train the target with DP-SGD (opacus) to this epsilon; inf: no DP. Writes OUT/target/dp.json"
    ),
    dp_delta: float = typer.Option(1e-5, help="with --dp-epsilon: the delta of (epsilon, delta)-DP"),
    dp_max_grad_norm: float = typer.Option(1.0, help="with --dp-epsilon: per-sample gradient clipping norm C"),
    prompt_template: Optional[str] = PROMPT_TEMPLATE_OPTION,
    no_chat_template: bool = NO_CHAT_TEMPLATE_OPTION,
    seed: int = typer.Option(0),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads"),
):
    """Train the target (all training data) and the oracle (everything but the forget split)."""
    from obliviate.models.prompt_format import prompt_format
    from obliviate.unlearning.world_models import oracle_names

    names = oracle_names(seed, oracles)  # --oracles 0 fails here, before anything is written
    from obliviate.unlearning.dp import DPConfig, dp_line, read_dp_record, require_opacus

    dp = None
    if dp_epsilon is not None:  # bad values and a missing opacus fail here, before anything is written
        dp = DPConfig(dp_epsilon, dp_delta, dp_max_grad_norm)
        if dp.private:
            require_opacus()

    fmt = prompt_format(prompt_template, no_chat_template)
    from obliviate.core.outputs import check_output, output_dir

    check_output(out, "finetune", inputs=(data, model))
    from obliviate.unlearning.world_models import train_world_models

    if only not in (None, "target", "oracle"):
        raise UsageError(f"--only must be 'target' or 'oracle', got {only!r}")
    set_threads(threads)
    with output_dir(out, "finetune", inputs=(data, model)) as o:
        for name, secs in train_world_models(
            data,
            o,
            forget_split=forget_split,
            base=model,
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            only=tuple(names) if only == "oracle" else only,
            prompt_format=fmt,
            oracles=oracles,
            dp=dp,
        ).items():
            typer.echo(f"{name}: trained in {secs:.1f} s -> {o / name}")
            if name == "target" and dp is not None and dp.private:
                typer.echo(dp_line(read_dp_record(o / name)))


def unlearn(
    model: str = typer.Option(..., help="HF model directory (or hub id when online) to unlearn from"),
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
    forget_batch_size: int = typer.Option(32),
    retain_batch_size: int = typer.Option(32),
    checkpoint_every: int = typer.Option(25, help="steps between checkpoints; 0 disables"),
    lora_r: int = typer.Option(0, help="> 0: train LoRA adapters of this rank, merged on save"),
    idk: Optional[Path] = typer.Option(None, help="'I don't know' answer pool (one per line)"),
    bf16: bool = BF16_OPTION,
    gradient_checkpointing: bool = GRADIENT_CHECKPOINTING_OPTION,
    max_batch_tokens: Optional[int] = MAX_BATCH_TOKENS_OPTION,
    prompt_template: Optional[str] = PROMPT_TEMPLATE_OPTION,
    no_chat_template: bool = NO_CHAT_TEMPLATE_OPTION,
    seed: int = typer.Option(0),
    utility: Optional[str] = UTILITY_OPTION,
    utility_tasks: Optional[Path] = UTILITY_TASKS_OPTION,
    utility_limit: int = UTILITY_LIMIT_OPTION,
    stop_on_collapse: bool = typer.Option(
        False,
        help="every --collapse-every steps answer 8 forget questions; stop training when their fluency "
        "(1 - bigram repetition, words and symbols) falls below 0.5; the model is saved as it stands",
    ),
    collapse_every: int = typer.Option(10, help="with --stop-on-collapse: steps between checks"),
    threads: Optional[int] = typer.Option(None),
):
    """Unlearn FORGET from MODEL while keeping RETAIN, with one registered method."""
    from obliviate.engine.utility import parse_utility
    from obliviate.models.prompt_format import prompt_format

    util = parse_utility(utility, utility_tasks, utility_limit)

    fmt = prompt_format(prompt_template, no_chat_template)
    from obliviate.core.outputs import check_output

    check_output(out, "unlearn", inputs=(model, forget, retain, data, idk), resume=resume)
    from obliviate.unlearning.run import run_unlearn

    text = False
    if suite or data:
        if not (suite and data) or forget or retain:
            raise UsageError("give either --forget and --retain, or --suite and --data")
        from obliviate.benchmarks.layouts import SUITES

        text = SUITES.get(suite).text
        if text and (prompt_template is not None or no_chat_template):
            raise UsageError(
                f"--prompt-template and --no-chat-template apply to question-answer data, not to the "
                f"raw documents of --suite {suite}"
            )
        forget, retain = SUITES.get(suite).train_paths(data, forget_split)
    elif not (forget and retain):
        raise UsageError("give --forget and --retain (or --suite and --data)")
    opts = parse_options(option)
    if steps is not None:
        opts["steps"] = steps
    if lr is not None:
        opts["lr"] = lr
    set_threads(threads)
    res = run_unlearn(
        model,
        forget,
        retain,
        method,
        out,
        options=opts,
        resume=resume,
        seed=seed,
        idk=idk,
        forget_batch_size=forget_batch_size,
        retain_batch_size=retain_batch_size,
        checkpoint_every=checkpoint_every,
        lora_r=lora_r,
        text=text,
        bf16=bf16,
        gradient_checkpointing=gradient_checkpointing,
        max_batch_tokens=max_batch_tokens,
        prompt_format=fmt,
        utility=util,
        stop_on_collapse=stop_on_collapse,
        collapse_every=collapse_every,
    )
    typer.echo(f"{method}: {res.steps} steps in {res.seconds:.1f} s, final loss {res.history[-1]['loss']:.4f} -> {out}")
    echo_utility(out)


def eval_cmd(
    model: List[str] = typer.Option(
        ...,
        help="model directory; repeat, or NAME=DIR to name runs; NAME=DIR1,DIR2,... is one method unlearned with "
        "several seeds (the mean of their figures; one distribution for KLoM)",
    ),
    data: Path = typer.Option(..., help="world-shaped data directory"),
    out: Path = typer.Option(..., help="writes results.json, samples.jsonl, report.md"),
    oracle: List[str] = typer.Option(
        [],
        help="oracle model directory (forget quality, privleak); repeat for oracles of several seeds: the first is "
        "THE oracle, all of them the distribution for KLoM and forget_quality_pooled",
    ),
    forget_split: str = typer.Option("forget10"),
    suite: str = typer.Option(
        "world",
        help="how to read --data: world, tofu, or diffusion (an image world; MODEL is a text-to-image directory)",
    ),
    concept: Optional[str] = typer.Option(None, help="diffusion: the erased concept word"),
    classifiers: Optional[Path] = typer.Option(None, help="diffusion: factor classifiers (default: DATA/classifiers)"),
    limit: Optional[int] = typer.Option(None, help="diffusion: at most N prompts per prompt set"),
    ddim_steps: Optional[int] = typer.Option(None, help="diffusion: DDIM steps per image [default: 25]"),
    guidance: Optional[float] = typer.Option(None, help="diffusion: classifier-free guidance scale [default: 2.0]"),
    guard: List[Path] = typer.Option(
        [],
        "--guard",
        help="a guard directory (`obliviate guard fit`) applied to the evaluated models, not the oracle (repeatable); "
        "diffusion: gog or gog:MAPPING.json (Guardians of Generation), each model also scored guarded as NAME+gog",
    ),
    prompt_template: Optional[str] = PROMPT_TEMPLATE_OPTION,
    no_chat_template: bool = NO_CHAT_TEMPLATE_OPTION,
    samples: int = SAMPLES_OPTION,
    temperature: Optional[float] = TEMPERATURE_OPTION,
    top_p: Optional[float] = TOP_P_OPTION,
    seed: int = typer.Option(0, help="sampled answers: answer j is drawn with seed + j"),
    utility: Optional[str] = UTILITY_OPTION,
    utility_tasks: Optional[Path] = UTILITY_TASKS_OPTION,
    utility_limit: int = UTILITY_LIMIT_OPTION,
    mia_gradnorm: bool = typer.Option(
        False, help="add the GradNorm MIA (mia_gradnorm_auc): one backward pass per forget and holdout item"
    ),
    threads: Optional[int] = typer.Option(None),
):
    """Evaluate models on the forget / retain / world-facts / holdout splits."""
    from obliviate.engine.utility import parse_utility
    from obliviate.models.prompt_format import prompt_format

    util = parse_utility(utility, utility_tasks, utility_limit)

    fmt = prompt_format(prompt_template, no_chat_template)
    from obliviate.core.outputs import check_output

    guard_dirs = [] if suite == "diffusion" else guard  # the diffusion suite's guard is a spec (gog[:MAPPING])
    check_output(out, "eval", inputs=(*named_runs(model).values(), data, *oracle, classifiers, *guard_dirs))
    from obliviate.guards.base import check_guard_dirs
    from obliviate.unlearning.evaluate import run_eval

    if suite == "diffusion":
        from obliviate.cli.diffusion import diffusion_eval, sampling

        if oracle or prompt_template is not None or no_chat_template:
            raise UsageError("--oracle, --prompt-template and --no-chat-template do not apply to --suite diffusion")
        if len(guard) > 1:
            raise UsageError("--suite diffusion takes one --guard (gog, or gog:MAPPING.json)")
        if samples != 1 or temperature is not None or top_p is not None or seed:
            raise UsageError("--samples, --temperature, --top-p and --seed do not apply to --suite diffusion")
        if util:
            raise UsageError("--utility runs lm-eval on language models; it does not apply to --suite diffusion")
        if mia_gradnorm:
            raise UsageError("--mia-gradnorm scores language models; it does not apply to --suite diffusion")
        set_threads(threads)
        diffusion_eval(
            named_runs(model),
            data,
            concept,
            classifiers,
            out,
            limit=limit,
            guard=str(guard[0]) if guard else None,
            **sampling(ddim_steps, guidance),
        )
        return
    if concept or classifiers or limit or ddim_steps is not None or guidance is not None:
        raise UsageError("--concept, --classifiers, --limit, --ddim-steps and --guidance apply to --suite diffusion")
    check_guard_dirs(guard)
    set_threads(threads)
    doc = run_eval(
        seed_runs(named_runs(model)),
        data,
        out,
        oracle=oracle or None,
        forget_split=forget_split,
        suite=suite,
        guards=[str(g) for g in guard],
        prompt_format=fmt,
        samples=samples,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        utility=util,
        grad_norm=mia_gradnorm,
    )
    from obliviate.report.markdown import table

    typer.echo(table(doc))


def seed_runs(runs: dict[str, str]) -> dict[str, str | list[str]]:
    """`--model NAME=DIR1,DIR2,...`: a run of several models (one method, several unlearning seeds); a path that
    exists is never split."""
    return {n: p if "," not in p or Path(p).exists() else [q for q in p.split(",") if q] for n, p in runs.items()}


def sweep(
    method: str = typer.Option(..., help="see `obliviate ls methods`"),
    grid: str = typer.Option(..., help="space-separated KEY=V1,V2,... e.g. 'lr=1e-4,3e-4 beta=0.05,0.1'"),
    model: str = typer.Option(..., help="the target model directory"),
    oracle: str = typer.Option(..., help="the oracle model directory"),
    data: Path = typer.Option(..., help="world directory"),
    out: Path = typer.Option(..., help="writes OUT/sweep.json"),
    forget_split: str = typer.Option("forget10"),
    maximize: str = typer.Option("forget_quality", help="metric to maximise"),
    min_utility_ratio: float = typer.Option(0.9, help="constraint: utility >= this x the target's"),
    idk: Optional[Path] = typer.Option(None),
    seed: int = typer.Option(0),
    prompt_template: Optional[str] = PROMPT_TEMPLATE_OPTION,
    no_chat_template: bool = NO_CHAT_TEMPLATE_OPTION,
    threads: Optional[int] = typer.Option(None),
):
    """Grid-search one method's options; pick the best point by an explicit criterion."""
    from obliviate.models.prompt_format import prompt_format

    fmt = prompt_format(prompt_template, no_chat_template)
    from obliviate.core.outputs import check_output

    check_output(out, "sweep", inputs=(model, oracle, data, idk))
    from obliviate.unlearning.sweep import run_sweep

    set_threads(threads)
    run_sweep(
        method,
        grid,
        model=model,
        oracle=oracle,
        data=data,
        out=out,
        forget_split=forget_split,
        seed=seed,
        maximize=maximize,
        min_utility_ratio=min_utility_ratio,
        idk=idk,
        prompt_format=fmt,
    )


def bench(
    out: Path = typer.Option(Path("runs/bench"), help="writes leaderboard.json and pareto.png"),
    seeds: str = typer.Option("0,1", help="comma-separated seeds (a fresh world and models per seed)"),
    splits: str = typer.Option("forget01,forget05,forget10"),
    methods: Optional[str] = typer.Option(None, help="comma-separated subset (default: all)"),
    finetune_steps: int = typer.Option(300, help="steps to train each target / oracle"),
    people: int = typer.Option(200, help="people in each seed's world"),
    resume: bool = typer.Option(False, help="continue an interrupted bench in OUT"),
    oracles: int = typer.Option(1, help="oracles per split and seed (seeds SEED..SEED+K-1); K > 1 adds KLoM columns"),
    threads: Optional[int] = typer.Option(None),
):
    """The leaderboard: every method x forget split x seed on the built-in world, mean ± std."""
    from obliviate.core.outputs import check_output

    check_output(out, "bench", resume=resume)
    from obliviate.unlearning.bench import run_bench

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    if not seed_list:
        raise UsageError("--seeds is empty")
    set_threads(threads)
    run_bench(
        out,
        seeds=seed_list,
        splits=[s.strip() for s in splits.split(",") if s.strip()],
        methods=methods.split(",") if methods else None,
        finetune_steps=finetune_steps,
        people=people,
        resume=resume,
        oracles=oracles,
    )
    from obliviate.report.html import write_beside  # OUT/report.html; a failed report only warns

    write_beside(out)
