"""The command-line reference (`docs/cli.md`), generated from the typer app so that it cannot drift.

`cli_markdown()` walks the click tree that typer builds from `obliviate.cli.app.app` and writes, for every
command and sub-command in the order `obliviate --help` lists them: its usage line, its help, its arguments and
its options (type, required or default, environment variable, help). `make cli-docs` runs

    python -m obliviate.cli.reference > docs/cli.md

and `tests/test_docs.py` fails when `docs/cli.md` differs from what this module writes now.
"""

from __future__ import annotations

import re
import sys

import typer
import typer.main

from obliviate.cli.app import app

PROG = "obliviate"

PREAMBLE = """\
# Command-line reference

Generated from the command-line parser by `make cli-docs` (`python -m obliviate.cli.reference > docs/cli.md`);
do not edit it by hand. `obliviate COMMAND --help` prints the same. Exit codes, progress output and the flags
that every command takes are described in [Conventions](conventions.md).
"""

_CODE_SPAN = re.compile(r"(`[^`\n]+`)")


def _escape(text: str) -> str:
    """Markdown-safe prose: characters that Markdown would read as markup are escaped outside `code spans`."""
    out = []
    for i, part in enumerate(_CODE_SPAN.split(text)):
        if i % 2:  # a code span: shown as written
            out.append(part)
            continue
        part = part.replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        for ch in "*_[]|#`":
            part = part.replace(ch, "\\" + ch)
        out.append(part)
    return "".join(out)


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _paragraphs(text: str | None) -> list[str]:
    """A command's help as paragraphs (blank lines separate them; line breaks inside one are spaces)."""
    return [_one_line(p) for p in re.split(r"\n\s*\n", (text or "").strip()) if p.strip()]


def _type(param, ctx) -> str:
    shown = param.display_type(ctx) or ""
    return shown[1:-1] if shown.startswith("<") and shown.endswith(">") else shown


def _default(param) -> str | None:
    """The default as `--help` means it, or None where there is none worth showing."""
    if param.required or not getattr(param, "show_default", True):
        return None
    value = param.default
    if callable(value):
        return None
    if getattr(param, "is_flag", False) and param.secondary_opts:  # --x / --no-x
        return param.opts[0] if value else param.secondary_opts[0]
    if getattr(param, "is_flag", False) or value is None or value in ([], ()):
        return None
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _argument_metavar(param) -> str:
    name = param.metavar or param.name.upper()
    if param.nargs == -1 and not name.endswith("..."):
        name += "..."
    return name if param.required else f"[{name}]"


def _usage(path: list[str], cmd) -> str:
    pieces = [PROG, *path, "[OPTIONS]"]
    pieces += [_argument_metavar(p) for p in cmd.params if p.param_type_name == "argument"]
    if isinstance(cmd, typer.core.TyperGroup):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def _argument_lines(cmd, ctx) -> list[str]:
    lines = []
    for p in cmd.params:
        if p.param_type_name != "argument" or p.hidden:
            continue
        facts = [f"`{_type(p, ctx)}`", "required" if p.required else "optional"]
        help_text = _escape(_one_line(p.help))
        lines.append(f"- `{_argument_metavar(p)}` ({', '.join(facts)})" + (f": {help_text}" if help_text else ""))
    return lines


def _option_lines(cmd, ctx) -> list[str]:
    lines = []
    for p in cmd.params:
        if p.param_type_name != "option" or p.hidden:
            continue
        names = " / ".join(f"`{n}`" for n in [*p.opts, *p.secondary_opts])
        facts = [] if getattr(p, "is_flag", False) else [f"`{_type(p, ctx)}`"]
        if p.required:
            facts.append("required")
        default = _default(p)
        if default is not None:
            facts.append(f"default `{default}`")
        if p.multiple:
            facts.append("repeatable")
        if p.envvar:
            facts.append(f"env var `{p.envvar}`")
        help_text = _escape(_one_line(p.help))
        line = f"- {names}" + (f" ({', '.join(facts)})" if facts else "") + (f": {help_text}" if help_text else "")
        lines.append(line)
    lines.append("- `--help`: show the command's help and exit.")
    return lines


def _section(path: list[str], cmd, ctx) -> list[str]:
    lines = [f"{'#' * min(len(path) + 1, 6)} `{' '.join([PROG, *path])}`", ""]
    for p in _paragraphs(cmd.help):
        lines += [_escape(p), ""]
    lines += ["```text", _usage(path, cmd), "```", ""]
    arguments = _argument_lines(cmd, ctx)
    if arguments:
        lines += ["Arguments:", "", *arguments, ""]
    lines += ["Options:", "", *_option_lines(cmd, ctx), ""]
    if isinstance(cmd, typer.core.TyperGroup):
        lines += ["Commands: " + ", ".join(f"`{name}`" for name in cmd.list_commands(ctx)) + ".", ""]
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            lines += _section([*path, name], sub, sub.context_class(sub, info_name=name, parent=ctx))
    return lines


def cli_markdown() -> str:
    """The whole command-line reference as Markdown: every command of `obliviate`, in the order of its help."""
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name=PROG)
    lines = [PREAMBLE]
    for p in _paragraphs(root.help):
        lines += [_escape(p), ""]
    lines += ["Commands: " + ", ".join(f"[`{name}`](#{_anchor(name)})" for name in root.list_commands(ctx)) + ".", ""]
    for name in root.list_commands(ctx):
        cmd = root.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        lines += _section([name], cmd, cmd.context_class(cmd, info_name=name, parent=ctx))
    return "\n".join(lines).rstrip("\n") + "\n"


def _anchor(name: str) -> str:
    """The id that mkdocs' table of contents gives the heading "`obliviate NAME`"."""
    return re.sub(r"[^a-z0-9]+", "-", f"{PROG} {name}".lower()).strip("-")


def main() -> None:
    sys.stdout.write(cli_markdown())


if __name__ == "__main__":
    main()
