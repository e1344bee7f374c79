"""`obliviate audit`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from obliviate.cli.common import (
    API_KEY_ENV_OPTION,
    CONCURRENCY_OPTION,
    HARM_JUDGE_API_KEY_ENV_OPTION,
    HARM_JUDGE_LABEL_ROWS_OPTION,
    HARM_JUDGE_LABELS_OPTION,
    HARM_JUDGE_MAX_NEW_TOKENS_OPTION,
    HARM_JUDGE_MODEL_OPTION,
    HARM_JUDGE_OPTION,
    HARM_JUDGE_SERVED_MODEL_OPTION,
    NO_CHAT_TEMPLATE_OPTION,
    PROMPT_TEMPLATE_OPTION,
    SAMPLES_OPTION,
    SERVED_MODEL_OPTION,
    TEMPERATURE_OPTION,
    TOP_P_OPTION,
    attack_options,
    set_threads,
    spec_files,
)
from obliviate.core.errors import UsageError


def audit(
    model: str = typer.Argument(
        ..., help="the model to audit: an HF directory, or openai:URL (an endpoint: the black-box attacks only)"
    ),
    suite: str = typer.Option(
        ...,
        help="unlearning (a world / TOFU directory or QA files), world (a world "
        "directory, with --oracle), refusal (a world, or public prompt files) "
        "or diffusion (an erased text-to-image model, --target, --concept)",
    ),
    concept: Optional[str] = typer.Option(None, help="diffusion: the erased concept word"),
    replay: Optional[Path] = typer.Option(
        None, help="diffusion: an earlier diffusion audit's directory; run its findings on MODEL (transfer ASR)"
    ),
    classifiers: Optional[Path] = typer.Option(None, help="diffusion: factor classifiers (default: DATA/classifiers)"),
    out: Path = typer.Option(..., help="writes audit.json, audit.md and artifacts/"),
    data: Optional[Path] = typer.Option(
        None, help="a data directory: a world (`obliviate world`) or, for --suite unlearning, a TOFU directory"
    ),
    layout: Optional[str] = typer.Option(
        None, help="unlearning: the directory's layout, world or tofu (default: told from its files)"
    ),
    forget: Optional[Path] = typer.Option(
        None, help="unlearning: {question, answer} records to have been forgotten (JSONL, JSON, Parquet, Arrow)"
    ),
    retain: Optional[Path] = typer.Option(None, help="unlearning: records to have been kept"),
    holdout: Optional[Path] = typer.Option(
        None,
        help="unlearning: records never trained on (the non-members of mia; replaces the directory's holdout file)",
    ),
    harmful: List[str] = typer.Option(
        [], help="refusal: KIND:FILE of prompts to refuse (repeatable), e.g. harmbench:harmbench_behaviors_text_val.csv"
    ),
    benign: List[str] = typer.Option(
        [], help="refusal: KIND:FILE of prompts to answer (repeatable; default: the shipped benign pool)"
    ),
    harmful_responses: Optional[Path] = typer.Option(
        None,
        help="refusal: BeaverTails-like prompt/response "
        "records for finetune (default: the model's "
        "own replies after each affirmative target)",
    ),
    judges: Optional[str] = typer.Option(
        None, help="refusal on public prompts: comma-separated judges (default: the strongest installed)"
    ),
    oracle: Optional[str] = typer.Option(
        None, help="model never trained on the forget set (required for the world suite)"
    ),
    target: Optional[str] = typer.Option(None, help="the model before unlearning / alignment"),
    attacks: Optional[str] = typer.Option(None, help="comma-separated subset (default: every applicable)"),
    option: List[str] = typer.Option([], help="attack option ATTACK.KEY=VALUE (repeatable)"),
    forget_split: str = typer.Option("forget10"),
    limit: Optional[int] = typer.Option(None, help="at most N rows per evaluation set (quick look)"),
    ddim_steps: Optional[int] = typer.Option(None, help="diffusion: DDIM steps per image [default: 25]"),
    guidance: Optional[float] = typer.Option(None, help="diffusion: classifier-free guidance scale [default: 2.0]"),
    max_new_tokens: int = typer.Option(48, help="reply length generated and judged"),
    time_budget: Optional[float] = typer.Option(
        None, help="seconds; attacks not started by then are skipped and listed"
    ),
    guard: List[Path] = typer.Option(
        [],
        "--guard",
        help="a guard directory (`obliviate guard fit`) on the "
        "audited model: attacks that train run on its weights with the guard "
        "still applied at generation (repeatable); diffusion: gog or gog:MAPPING.json (Guardians of Generation)",
    ),
    prompt_template: Optional[str] = PROMPT_TEMPLATE_OPTION,
    no_chat_template: bool = NO_CHAT_TEMPLATE_OPTION,
    attacker_model: Optional[str] = typer.Option(
        None,
        help="refusal: the chat model that writes the prompts of pair and tap, a directory or openai:URL "
        "(default: the audited model)",
    ),
    attacker_served_model: Optional[str] = typer.Option(None, help="an openai:URL attacker: the served model's name"),
    attacker_api_key_env: Optional[str] = typer.Option(
        None, help="an openai:URL attacker: the environment variable holding its API key"
    ),
    resume: bool = typer.Option(
        False, help="continue an audit in --out that stopped: finished attacks and behaviours are kept"
    ),
    harm_judge: Optional[str] = HARM_JUDGE_OPTION,
    harm_judge_model: Optional[str] = HARM_JUDGE_MODEL_OPTION,
    harm_judge_served_model: Optional[str] = HARM_JUDGE_SERVED_MODEL_OPTION,
    harm_judge_api_key_env: Optional[str] = HARM_JUDGE_API_KEY_ENV_OPTION,
    harm_judge_labels: Optional[Path] = HARM_JUDGE_LABELS_OPTION,
    harm_judge_label_rows: Optional[int] = HARM_JUDGE_LABEL_ROWS_OPTION,
    harm_judge_max_new_tokens: Optional[int] = HARM_JUDGE_MAX_NEW_TOKENS_OPTION,
    served_model: Optional[str] = SERVED_MODEL_OPTION,
    api_key_env: Optional[str] = API_KEY_ENV_OPTION,
    concurrency: int = CONCURRENCY_OPTION,
    tokenizer: Optional[Path] = typer.Option(
        None, help="openai:URL models: the served model's tokenizer directory (prefill cuts answers in its tokens)"
    ),
    samples: int = SAMPLES_OPTION,
    temperature: Optional[float] = TEMPERATURE_OPTION,
    top_p: Optional[float] = TOP_P_OPTION,
    seed: int = typer.Option(0),
    threads: Optional[int] = typer.Option(None),
):
    """Attack MODEL to tell removed from suppressed knowledge, and real refusals from shallow ones."""
    from obliviate.models.prompt_format import prompt_format, raw_format

    fmt = prompt_format(prompt_template, no_chat_template)
    if suite == "refusal":  # requests are written raw (the question and a newline), as refusal-eval writes them
        if prompt_template is not None:
            raise UsageError("--prompt-template applies to --suite unlearning and world (refusal: --no-chat-template)")
        fmt = raw_format(no_chat_template)
    elif suite not in ("unlearning", "world") and (prompt_template is not None or no_chat_template):
        raise UsageError("--prompt-template and --no-chat-template apply to --suite unlearning, world and refusal")
    if attacker_model is not None:  # the attacker of pair and tap
        option = [*option, f"pair.attacker_model={attacker_model}", f"tap.attacker_model={attacker_model}"]
    endpoint_attacker = {"attacker_served_model": attacker_served_model, "attacker_api_key_env": attacker_api_key_env}
    for key, value in endpoint_attacker.items():
        if value:  # an endpoint attacker's name and key
            option = [*option, f"pair.{key}={value}", f"tap.{key}={value}"]
    from obliviate.core.outputs import check_output

    check_output(
        out,
        "audit",
        inputs=(
            model,
            data,
            oracle,
            target,
            forget,
            retain,
            holdout,
            classifiers,
            harmful_responses,
            *spec_files(harmful, benign),
            *([] if suite == "diffusion" else guard),  # the diffusion suite's guard is a spec (gog[:MAPPING])
            attacker_model,
        ),
        resume=resume,
    )
    from obliviate.audit.runner import report, run_audit
    from obliviate.guards.base import check_guard_dirs
    from obliviate.report.html import write_beside  # OUT/report.html; a failed report only warns

    if suite != "diffusion":
        check_guard_dirs(guard)
    if limit is not None and limit < 1:
        raise UsageError("--limit must be >= 1")
    if harm_judge is not None and suite != "refusal":
        raise UsageError("--harm-judge applies to --suite refusal")
    from obliviate.judges.harm import harm_judge_option

    harm = harm_judge_option(
        harm_judge,
        harm_judge_model,
        harm_judge_served_model,
        harm_judge_api_key_env,
        harm_judge_labels,
        harm_judge_label_rows,
        harm_judge_max_new_tokens,
    )
    if suite == "diffusion":
        from obliviate.cli.diffusion import diffusion_audit, sampling

        if any(str(m or "").startswith("openai:") for m in (model, target, oracle)):
            raise UsageError("--suite diffusion audits local models; openai:URL applies to the text suites")
        if samples != 1 or temperature is not None or top_p is not None:
            raise UsageError("--samples, --temperature and --top-p apply to the text suites")

        if data is None:
            raise UsageError(
                "--suite diffusion needs --data: an image world (`obliviate world --images --classifiers`)"
            )
        if len(guard) > 1:
            raise UsageError("--suite diffusion takes one --guard (gog, or gog:MAPPING.json)")
        set_threads(threads)
        if replay is not None:
            from obliviate.cli.diffusion import diffusion_replay

            if attacks or option or target:
                raise UsageError(
                    "--replay runs the findings saved in its directory: no --attacks, --option or --target"
                )
            diffusion_replay(
                model,
                replay,
                data,
                concept,
                classifiers,
                out,
                guard=str(guard[0]) if guard else None,
                **sampling(ddim_steps, guidance),
            )
            write_beside(out)
            return
        diffusion_audit(
            model,
            target,
            data,
            concept,
            classifiers,
            out,
            [a.strip() for a in attacks.split(",") if a.strip()] if attacks else None,
            attack_options(option),
            prompts=limit or 4,
            time_budget=time_budget,
            guard=str(guard[0]) if guard else None,
            seed=seed,
            **sampling(ddim_steps, guidance),
        )
        write_beside(out)
        return
    if concept or classifiers or replay or ddim_steps is not None or guidance is not None:
        raise UsageError("--concept, --classifiers, --replay, --ddim-steps and --guidance apply to --suite diffusion")
    set_threads(threads)
    doc = run_audit(
        model,
        suite,
        data,
        out,
        oracle=oracle,
        target=target,
        attacks=[a.strip() for a in attacks.split(",") if a.strip()] if attacks else None,
        options=attack_options(option),
        forget_split=forget_split,
        seed=seed,
        limit=limit,
        time_budget=time_budget,
        layout=layout,
        forget=forget,
        retain=retain,
        holdout=holdout,
        harmful=harmful,
        benign=benign,
        harmful_responses=harmful_responses,
        judges=[j.strip() for j in judges.split(",") if j.strip()] if judges else None,
        max_new_tokens=max_new_tokens,
        guards=[str(g) for g in guard],
        prompt_format=fmt,
        resume=resume,
        harm_judge=harm,
        served_model=served_model,
        api_key_env=api_key_env,
        concurrency=concurrency,
        tokenizer=tokenizer,
        samples=samples,
        temperature=temperature,
        top_p=top_p,
    )
    typer.echo(report(doc))
    typer.echo(f"wrote {out}/audit.json, audit.md ({doc['wall_seconds']} s)")
    write_beside(out)
