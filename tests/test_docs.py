"""The documentation: the command-line reference is generated from the parser, the commands shown exist, the README
stays short, `mkdocs build --strict` passes, and no page carries issue numbers, temporary paths or development
session stories."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import typer.main

from obliviate.cli.app import app
from obliviate.cli.reference import cli_markdown

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "mkdocs.yml").is_file())  # wherever tests/ moves
DOCS = ROOT / "docs"
README = ROOT / "README.md"
GLOBAL_FLAGS = {"--quiet", "--json", "--dtype", "--help"}  # taken by every command (cli/conventions.py)


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_cli_reference_is_current():
    written = (DOCS / "cli.md").read_text(encoding="utf-8")
    expected = cli_markdown()
    if written != expected:
        old, new = written.splitlines(), expected.splitlines()
        line = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
        shown = new[line] if line < len(new) else "(end of file)"
        pytest.fail(
            f"docs/cli.md is not what the command line says now (first difference at line {line + 1}: "
            f"{shown!r}): run `make cli-docs`"
        )


def _commands(group, ctx, path=()):
    """(path, click command, context) for every command and sub-command of the app."""
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        sub_ctx = cmd.context_class(cmd, info_name=name, parent=ctx)
        yield (*path, name), cmd, sub_ctx
        if isinstance(cmd, typer.core.TyperGroup):
            yield from _commands(cmd, sub_ctx, (*path, name))


def _root():
    root = typer.main.get_command(app)
    return root, root.context_class(root, info_name="obliviate")


def test_cli_reference_names_every_command_option_and_default():
    text = cli_markdown()
    root, ctx = _root()
    seen = 0
    for path, cmd, _ in _commands(root, ctx):
        start = text.index(f"`obliviate {' '.join(path)}`\n")  # its heading
        nxt = text.find("\n#", start)
        section = text[start : nxt if nxt > 0 else len(text)]
        listed = {
            name
            for line in section.splitlines()
            if line.startswith("- `--")
            for name in re.findall(r"`(--[^`]+)`", re.split(r" \(|: ", line, maxsplit=1)[0])
        }
        for p in cmd.params:
            if p.param_type_name == "option":
                for opt in (*p.opts, *p.secondary_opts):
                    assert opt in listed, f"{opt} of `obliviate {' '.join(path)}` is not listed in cli.md"
                    seen += 1
    assert seen > 200  # every command's options, not a few
    # a default, a required option and an env var, as --help shows them
    serve = text[text.index("`obliviate serve`\n") :]
    assert "- `--port` (`int`, default `8000`)" in serve
    assert "env var `OBLIVIATE_API_KEY`" in serve
    assert "- `--model` (`str`, required)" in text[text.index("`obliviate unlearn`\n") :]


def _shown_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command line) of every `obliviate ...` line inside the bash and console code blocks."""
    found, block, pending, start = [], None, "", 0
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            block = line[3:].strip() if block is None else None
            continue
        if block not in ("bash", "console", "sh"):
            continue
        line = line.split(" # ")[0].rstrip() if not pending else line.rstrip()
        if not pending:
            stripped = line.lstrip("$ ").strip()
            words = stripped.split()
            while words and (re.match(r"^[A-Z_]+=", words[0]) or words[0] in ("time", "/usr/bin/time", "-v")):
                words.pop(0)
            if not words or not (words[0] == "obliviate" or words[0].endswith("/bin/obliviate")):
                continue
            line, start = " ".join(words), i
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            found.append((start, pending.strip()))
            pending = ""
    return found


def _check_flags(where: str, command: str, commands: dict) -> list[str]:
    try:
        words = shlex.split(command.split(" | ")[0], comments=True)
    except ValueError:
        words = command.split()
    path: tuple[str, ...] = ()
    for w in words[1:]:
        if (*path, w) in commands:
            path = (*path, w)
        else:
            break
    if not path:
        return [f"{where}: no such command in {command!r}"]
    cmd = commands[path]
    known = {o for p in cmd.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)}
    wrong = []
    for w in words:
        flag = w.strip("[]()").split("=")[0]
        if re.fullmatch(r"--[a-z][a-z0-9-]*", flag) and flag not in known | GLOBAL_FLAGS:
            wrong.append(f"{where}: `obliviate {' '.join(path)}` has no {flag}")
    return wrong


def test_every_command_shown_in_the_docs_exists_with_its_flags():
    root, ctx = _root()
    commands = {path: cmd for path, cmd, _ in _commands(root, ctx)}
    problems, checked = [], 0
    for page in pages():
        for line, command in _shown_commands(page.read_text(encoding="utf-8")):
            problems += _check_flags(f"{page.relative_to(ROOT)}:{line}", command, commands)
            checked += 1
    assert checked > 50
    assert not problems, "\n".join(problems)


def test_flag_check_catches_a_flag_that_does_not_exist():
    root, ctx = _root()
    commands = {path: cmd for path, cmd, _ in _commands(root, ctx)}
    text = "```bash\nobliviate unlearn --model m --method npo \\\n    --no-such-flag 3 --out o\n```\n"
    ((line, command),) = _shown_commands(text)
    assert line == 2
    assert _check_flags("x", command, commands) == ["x: `obliviate unlearn` has no --no-such-flag"]
    assert _check_flags("x", "obliviate guard fit latent --model m --out o", commands) == []
    missing = "x: no such command in 'obliviate unlearnn --model m'"
    assert _check_flags("x", "obliviate unlearnn --model m", commands) == [missing]


def test_readme_is_at_most_300_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail into docs/ (at most 300)"


def test_the_readmes_links_into_the_repository_exist():
    """mkdocs checks the links between docs pages; the README lives outside docs/, so its links are checked here."""
    text = README.read_text(encoding="utf-8")
    targets = {t for t in re.findall(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)", text) if "://" not in t}
    assert len(targets) > 10
    missing = sorted(t for t in targets if not (ROOT / t).exists())
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_mkdocs_build_is_strict_clean(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-q",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, (
        "`mkdocs build --strict` failed (mkdocs is in the dev extra: "
        f"pip install -e '.[dev]'):\n{done.stdout}{done.stderr}"
    )
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "cli" / "index.html").is_file()


FORBIDDEN = [
    (re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE), "an issue number"),
    (re.compile(r"(?<![&\w])#\d+\b"), "an issue number"),
    (re.compile(r"/tmp/"), "a temporary path"),
]
SESSION = re.compile(r"\bsessions?\b", re.IGNORECASE)


def _prose(text: str) -> str:
    """The text without fenced code blocks and `code spans` (a code identifier may be called `session`)."""
    text = re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`]+`", lambda m: "``" + "\n" * m.group(0).count("\n"), text)  # a span may wrap a line


def forbidden(text: str) -> list[tuple[int, str]]:
    """(line, what) for each issue number, temporary path or session story in a page."""
    found = []
    for i, (line, prose) in enumerate(zip(text.splitlines(), _prose(text).splitlines()), 1):
        found += [(i, what) for pattern, what in FORBIDDEN if pattern.search(line)]
        if SESSION.search(prose):
            found.append((i, "a development session"))
    return found


def test_the_forbidden_patterns_are_found():
    assert forbidden(
        "fixed in issue 27.\nsee #27\nok: &#8594; and `session.halt(row)`\n/tmp/x.py\nin this session we"
    ) == [(1, "an issue number"), (2, "an issue number"), (4, "a temporary path"), (5, "a development session")]
    assert forbidden("```python\nsession.probe(ids)\n```\nplain text, `on_step(step,\nsession)`\n") == []


def test_no_issue_numbers_temporary_paths_or_session_stories():
    problems = [
        f"{page.relative_to(ROOT)}:{line}: {what}"
        for page in pages()
        for line, what in forbidden(page.read_text(encoding="utf-8"))
    ]
    assert not problems, "\n".join(problems)
