"""What every command module shares. It imports none of them, so the command modules never import each other."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import typer

from obliviate.core.errors import UsageError

STARTED = time.perf_counter()  # demos report wall time from process start, imports included

# options of a model named `openai:URL` (an OpenAI-compatible endpoint, `obliviate.models.remote`)
SERVED_MODEL_OPTION = typer.Option(
    None, help="openai:URL models: the served model's name (default: the one model the endpoint lists)"
)
API_KEY_ENV_OPTION = typer.Option(
    None, help="openai:URL models: the environment variable holding the API key (never the key itself)"
)
CONCURRENCY_OPTION = typer.Option(4, help="openai:URL models: requests in flight at once")

# the harm judge (`obliviate.judges.harm`): `refusal-eval` and `audit` share them
HARM_JUDGE_OPTION = typer.Option(
    None, help="add a harm verdict to the refusal one: strongreject or harmbench (judge model: --harm-judge-model)"
)
HARM_JUDGE_MODEL_OPTION = typer.Option(None, help="the harm judge's model: a local model directory or openai:URL")
HARM_JUDGE_SERVED_MODEL_OPTION = typer.Option(None, help="an openai:URL harm judge: the served model's name")
HARM_JUDGE_API_KEY_ENV_OPTION = typer.Option(
    None, help="an openai:URL harm judge: the environment variable holding its API key"
)
HARM_JUDGE_LABELS_OPTION = typer.Option(
    None,
    help="human-labelled replies (an XSTest completions CSV: prompt, completion, final_label): report the harm "
    "judge's agreement and the rate corrected for its errors (Rogan-Gladen)",
)
HARM_JUDGE_LABEL_ROWS_OPTION = typer.Option(None, help="judge at most N rows of --harm-judge-labels (every n-th)")
HARM_JUDGE_MAX_NEW_TOKENS_OPTION = typer.Option(
    None,
    help="the harm judge's reply budget [default: 512 for strongreject, 4 for harmbench]; a rubric cut short is "
    "recorded as unparsed, never scored",
)

# sampled replies (`engine.sampling.sampling_for`): `refusal-eval`, `eval` and `audit` share them
SAMPLES_OPTION = typer.Option(
    1,
    help="replies per prompt; N > 1 samples them (temperature 1.0 unless --temperature) and adds the worst case over "
    "a prompt's N replies (refusal_rate@all{N}, over_refusal_rate@any{N}, ...@any{N})",
)
TEMPERATURE_OPTION = typer.Option(None, help="sample replies at this temperature (> 0) [default: greedy decoding]")
TOP_P_OPTION = typer.Option(None, help="sample replies from this nucleus mass in (0, 1] [default: greedy decoding]")

# training options that `unlearn` and `align` share (TrainConfig.bf16, .gradient_checkpointing, .max_batch_tokens)
BF16_OPTION = typer.Option(False, "--bf16", help="bf16 autocast forward passes (faster on AMX CPUs and GPUs)")
GRADIENT_CHECKPOINTING_OPTION = typer.Option(
    False, "--gradient-checkpointing", help="recompute activations in the backward pass: less memory, slower steps"
)
MAX_BATCH_TOKENS_OPTION = typer.Option(
    None,
    "--max-batch-tokens",
    help="train each part of a batch in micro-batches of at most N padded "
    "tokens (the same step, less memory) [default: 2048 where the "
    "method's loss splits, else whole batches; 0: whole batches]",
)
# how question-answer items are written for a model without a chat template (models/prompt_format.py)
PROMPT_TEMPLATE_OPTION = typer.Option(
    None,
    "--prompt-template",
    help="how items are written for a model without a chat template (and for "
    "every model with --no-chat-template), by default 'Question: "
    "{question}\\nAnswer: {answer}'; must contain {question}; \\n is a "
    "newline",
)
NO_CHAT_TEMPLATE_OPTION = typer.Option(
    False,
    "--no-chat-template",
    help="write items in the plain template (--prompt-template) even for a model that has a chat template",
)

# general capability through lm-evaluation-harness (`obliviate.engine.utility`): `eval`, `refusal-eval`, `align`,
# `unlearn` and `demo` (world and refusal suites) share them
UTILITY_OPTION = typer.Option(
    None,
    "--utility",
    help="lm-eval:TASK[,TASK...]: run lm-evaluation-harness tasks on each model (offline: local data files or the "
    "datasets cache); figures utility/TASK/METRIC",
)
UTILITY_TASKS_OPTION = typer.Option(
    None, "--utility-tasks", help="a directory of lm-eval task YAMLs (lm-eval's include_path) for --utility"
)
UTILITY_LIMIT_OPTION = typer.Option(100, "--utility-limit", help="--utility: at most N examples per task (0: all)")


def set_threads(n: Optional[int]) -> None:
    """Pin torch's CPU threads (two torch processes on a 2-core machine slow each other 3-15x)."""
    if n is not None and n < 1:
        raise UsageError(f"--threads must be >= 1, got {n}")
    if n:
        import torch

        torch.set_num_threads(n)


def parse_options(options: list[str]) -> dict:
    """Repeated `--option KEY=VALUE` -> {key: value} (values stay strings; each config casts its own)."""
    out = {}
    for o in options:
        if "=" not in o:
            raise UsageError(f"--option expects KEY=VALUE, got {o!r}")
        k, v = o.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def attack_options(options: list[str]) -> dict[str, dict]:
    """ATTACK.KEY=VALUE -> {attack: {key: value}}."""
    out: dict[str, dict] = {}
    for o in options:
        if "=" not in o or "." not in o.split("=", 1)[0]:
            raise UsageError(f"--option expects ATTACK.KEY=VALUE (e.g. relearn.steps=40), got {o!r}")
        key, value = o.split("=", 1)
        attack, name = key.split(".", 1)
        out.setdefault(attack.strip(), {})[name.strip()] = value.strip()
    return out


def spec_files(*groups: list[str]) -> list[str]:
    """The FILE of each repeated `KIND:FILE` option value (what the command reads), for the output checks."""
    return [spec.split(":", 1)[-1] for group in groups for spec in group]


def named_runs(models: list[str]) -> dict[str, str]:
    """Repeated `--model DIR` or `--model NAME=DIR` -> {name: path}; a bare directory is named after itself, a bare
    endpoint (`openai:URL`) after its host and port."""
    runs = {}
    for m in models:
        name, path = m.split("=", 1) if "=" in m and not Path(m).exists() else (Path(m).name, m)
        if path == m and m.startswith("openai:"):
            name = urlparse(m[len("openai:") :]).netloc or m
        if name in runs:
            raise UsageError(f"two models are named {name!r}; name them with NAME=DIR")
        runs[name] = path
    return runs


def echo_utility(out: Path) -> None:
    """Print the lm-eval figures that `unlearn` / `align --utility` wrote in OUT/train_log.json, one per line."""
    import json

    from obliviate.engine.utility import utility_lines

    log = Path(out) / "train_log.json"
    found = json.loads(log.read_text(encoding="utf-8")).get("utility") if log.is_file() else None
    for line in utility_lines(found) if found else ():
        typer.echo(line)
