"""The `obliviate` command line, assembled in one place from one module per command group.

Command modules import only `obliviate.cli.common` and typer at the top; torch and transformers are imported
inside commands, so `--help` and `ls` stay fast.

Exit codes: 0 success, 2 bad input or usage (one line on stderr, no traceback), 1 internal error.
"""

from __future__ import annotations

import difflib
import os
import re
import sys

import typer

from obliviate.cli import (
    audit,
    benchmarks,
    data,
    demo,
    diffusion,
    guard,
    info,
    judge,
    models,
    refusal,
    report,
    runs,
    serve,
    unlearning,
)
from obliviate.core.errors import UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Make a generative model forget what it must, and prove it.\n\nOn every command, anywhere on "
    "the line: --quiet (nothing on stderr but an error line), --json (one JSON document on stdout), "
    "--dtype float32|bfloat16|float16 (the dtype language models are loaded in).",
)

COMMANDS = [
    (data.world, None),
    (data.prompts, None),
    (unlearning.finetune, None),
    (unlearning.unlearn, None),
    (unlearning.eval_cmd, "eval"),
    (unlearning.sweep, None),
    (unlearning.bench, None),
    (demo.demo, None),
    (benchmarks.muse, None),
    (benchmarks.muse_eval, "muse-eval"),
    (benchmarks.wmdp, None),
    (benchmarks.tofu_score, "tofu-score"),
    (refusal.align, None),
    (refusal.refusal_eval_cmd, "refusal-eval"),
    (refusal.calibrate, None),
    (audit.audit, None),
    (diffusion.erase, None),
    (report.report, None),
    (info.ls, "ls"),
    (info.env, None),
    (serve.serve, None),
]
for func, name in COMMANDS:
    app.command(name)(func)
app.add_typer(judge.judge_app, name="judge")
app.add_typer(models.models_app, name="models")
app.add_typer(guard.guard_app, name="guard")
app.add_typer(runs.runs_app, name="runs")


def _errors():
    from obliviate.cli.conventions import error_stream

    return error_stream()


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _usage_exit(e: UsageError) -> None:
    """Bad input or usage: one line on stderr, exit 2."""
    typer.echo(f"error: {_one_line(e)}", file=_errors())
    sys.exit(2)


def _parser_error(e: BaseException) -> int | None:
    """Exit code for click's own exceptions, whichever click raised them (click itself, or the copy that typer
    >= 0.29 vendors as `typer._click`): they are recognised by class name, not by identity. None: not click's."""
    names = {c.__name__ for c in type(e).__mro__}
    if "NoArgsIsHelpError" in names:  # `obliviate` or `obliviate judge` alone: the help, as asked
        ctx = getattr(e, "ctx", None)
        typer.echo(ctx.get_help() if ctx is not None else "see `obliviate --help`")
        return 0
    if "Abort" in names:
        return 130
    if "Exit" in names:
        return getattr(e, "exit_code", 0)
    if "ClickException" not in names:
        return None
    message = _one_line(e.format_message())
    ctx = getattr(e, "ctx", None)
    if message.startswith("No such command") and "Did you mean" not in message:  # older typers do not suggest
        wrong = message.split("'")[1] if message.count("'") >= 2 else ""
        known = ctx.command.list_commands(ctx) if ctx is not None and hasattr(ctx.command, "list_commands") else []
        close = difflib.get_close_matches(wrong, known, n=1)
        if close:
            message += f" Did you mean '{close[0]}'?"
    if ctx is not None and "UsageError" in names:
        message += f" (see '{ctx.command_path} --help')"
    typer.echo(f"error: {message}", file=_errors())
    return getattr(e, "exit_code", 1)


def _out_of_memory(e: BaseException) -> str | None:
    """The allocation that failed, when `e` is torch running out of memory (a GPU's OutOfMemoryError, or a CPU
    allocation refused under a memory limit); None otherwise. Where the kernel's OOM killer acts first, the process
    dies with SIGKILL and nothing can be printed."""
    text = str(e)
    if type(e).__name__ != "OutOfMemoryError" and not (
        isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())
    ):
        return None
    tried = re.search(r"tried to allocate (\d+(?:\.\d+)?) ?(bytes|[KMGT]i?B)", text, re.IGNORECASE)
    if not tried:
        return "out of memory"
    size, unit = float(tried.group(1)), tried.group(2)
    return (
        f"out of memory (an allocation of {size / 1e9:.1f} GB failed)"
        if unit == "bytes"
        else f"out of memory (an allocation of {size:g} {unit} failed)"
    )


def main() -> None:
    """Run the command; every command with an --out option is recorded in the run registry around it
    (obliviate.runs.hook: `running` now, then done / failed / interrupted; OBLIVIATE_REGISTRY=off disables)."""
    import contextlib

    from obliviate.cli import conventions
    from obliviate.runs import hook  # standard library only: milliseconds

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # --quiet / --json / --dtype, anywhere on the line, for every command (cli/conventions.py)
    given = sys.argv[1:]
    argv, quiet, as_json = conventions.take_flags(app, given)
    try:
        argv, dtype = conventions.take_value(app, argv, "--dtype")
        if dtype is not None:
            from obliviate.models.load import canonical_dtype  # standard library only: no torch yet

            os.environ["OBLIVIATE_DTYPE"] = canonical_dtype(dtype)
    except UsageError as e:
        _usage_exit(e)
    sys.argv = [sys.argv[0], *argv]
    live = hook.start(app, argv, recorded=given)
    try:
        with contextlib.ExitStack() as stack:
            if quiet:
                stack.enter_context(conventions.quiet_stderr())
            if as_json:
                stack.enter_context(conventions.stdout_to_stderr())
            _main()
    except BaseException as e:  # SystemExit included: its code and __context__ say how the command ended
        hook.finish(live, e)
        raise
    hook.finish(live, None)
    if as_json:
        conventions.print_results(conventions.out_dir(app, argv))


def _main() -> None:
    try:
        code = app(standalone_mode=False, prog_name="obliviate")
    except UsageError as e:
        _usage_exit(e)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        oom = _out_of_memory(e)
        if oom:  # a resource limit, not bad input: exit 1, and the output (checkpoints) stays for --resume
            typer.echo(
                f"error: {oom}: lower what one step holds (--max-batch-tokens 1024 or less, "
                "--gradient-checkpointing, smaller batches, LoRA with --lora-r); a training command "
                "continues from its last checkpoint with --resume",
                file=_errors(),
            )
            sys.exit(1)
        code = _parser_error(e)
        if code is None:
            raise
        sys.exit(code)
    if isinstance(code, int) and code:  # click returns the code of `ctx.exit(n)` in non-standalone mode
        sys.exit(code)


if __name__ == "__main__":
    main()
