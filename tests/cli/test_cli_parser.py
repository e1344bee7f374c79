"""Parser-level usage errors exit 2 with one line and no traceback, for every command, whatever click raised them."""

import pytest
import typer

from obliviate.cli.app import _parser_error, app
from tests.cli.test_cli import run_cli


def _commands(group=None, path=()):
    """(path, click command) for every leaf command of the app."""
    group = group or typer.main.get_command(app)
    for name in group.list_commands(None):
        cmd = group.get_command(None, name)
        if hasattr(cmd, "list_commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


COMMANDS = list(_commands())


def _one_error_line(code, err, must):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert must in lines[0], lines[0]


def test_every_command_is_listed():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"unlearn", "eval", "refusal-eval", "audit", "judge refusal", "models convert", "models get"} <= names


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_mistyped_option(path, capsys):
    code, _, err = run_cli([*path, "--no-such-option", "1"], capsys)
    _one_error_line(code, err, "No such option")


@pytest.mark.parametrize("path", [p for p, c in COMMANDS if any(x.required for x in c.params)], ids=" ".join)
def test_missing_option(path, capsys):
    code, _, err = run_cli(list(path), capsys)
    _one_error_line(code, err, "Missing")


def _numeric(param) -> bool:
    """An int or float option (typer 0.29 keeps the annotation; click-based typers keep a click type)."""
    import typing

    desc = getattr(param, "type_descriptor", None)
    if desc is not None:
        ann = desc.annotation
        return ann in (int, float) or any(a in (int, float) for a in typing.get_args(ann))
    return getattr(getattr(param, "type", None), "name", "") in ("integer", "float")


NUMERIC = [
    (p, o)
    for p, c in COMMANDS
    for o in c.params
    if getattr(o, "opts", None) and o.opts[0].startswith("--") and _numeric(o)
]


@pytest.mark.parametrize("path,opt", NUMERIC, ids=[f"{' '.join(p)} {o.opts[0]}" for p, o in NUMERIC])
def test_malformed_number(path, opt, capsys):
    code, _, err = run_cli([*path, opt.opts[0], "abc"], capsys)
    _one_error_line(code, err, "Invalid value")


def test_mistyped_command_suggests(capsys):
    code, _, err = run_cli(["unlearnn"], capsys)
    _one_error_line(code, err, "Did you mean 'unlearn'")
    code, _, err = run_cli(["judge", "refusl"], capsys)
    _one_error_line(code, err, "refusal")


def test_no_arguments_prints_help(capsys):
    code, out, err = run_cli([], capsys)
    assert code == 0 and "Usage" in out and not err


def test_any_click_copy_is_recognised(capsys):
    """Exceptions of the standalone click package (older typers use it) and of typer's vendored copy."""
    import click

    copies = [click]
    try:
        import typer._click.exceptions as vendored

        copies.append(vendored)
    except ImportError:
        pass
    for c in copies:
        assert _parser_error(c.UsageError("bad thing\nsecond line")) == 2
        assert _parser_error(c.BadParameter("not a number")) == 2
        err = capsys.readouterr().err
        assert [ln for ln in err.splitlines() if ln] == [
            "error: bad thing second line",
            "error: Invalid value: not a number",
        ]
    assert _parser_error(ValueError("not click")) is None
