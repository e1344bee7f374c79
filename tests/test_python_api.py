"""The Python API: docs/python.md runs as written (its python cells in order, in one namespace, in a fresh
directory), `import obliviate` stays light, and every exported name resolves to a documented function."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "mkdocs.yml").is_file())
PAGE = ROOT / "docs" / "python.md"


def python_cells(text: str) -> list[tuple[int, str]]:
    """(first line, code) of every ```python block of a Markdown page, in order."""
    return [
        (text[: m.start()].count("\n") + 2, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    ]


def test_python_cells_are_found():
    text = "x\n```python\na = 1\n```\n```text\nno\n```\n```python\nb = a\n```\n"
    assert python_cells(text) == [(3, "a = 1\n"), (9, "b = a\n")]


def test_the_python_page_runs_as_written(tmp_path, monkeypatch):
    cells = python_cells(PAGE.read_text(encoding="utf-8"))
    assert len(cells) >= 6
    monkeypatch.chdir(tmp_path)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only waits (10x slower on a busy 2-core machine)
    namespace: dict = {"__name__": "__main__"}
    try:
        for line, code in cells:
            exec(compile(code, f"{PAGE}:{line}", "exec"), namespace)  # noqa: S102 - the page's own code
    finally:
        torch.set_num_threads(threads)
    # what the page claims it wrote is there
    for path in ("models/target", "models/oracle", "runs/npo", "runs/refusal_sft"):
        assert (tmp_path / path / "config.json").is_file(), path
    for path in (
        "runs/eval/results.json",
        "runs/audit/audit.json",
        "runs/audit/audit.md",
        "runs/refusal/results.json",
        "guards/npo/guard.json",
    ):
        assert (tmp_path / path).is_file(), path
    assert namespace["result"].steps == 4  # align's TrainResult, after the unlearning one
    assert namespace["guard"].name == "guard"
    # the tail unlearn and align share: the record, the model and train_log.json written, checkpoint/ removed, and
    # a finished run is never resumed
    from obliviate.core.errors import UsageError

    obliviate, world = namespace["obliviate"], namespace["world"]
    for run, record in (("runs/npo", "unlearn.json"), ("runs/refusal_sft", "align.json")):
        log = json.loads((tmp_path / run / "train_log.json").read_text())
        assert log["steps"] == json.loads((tmp_path / run / record).read_text())["options"]["steps"]
        assert not (tmp_path / run / "checkpoint").exists()
    with pytest.raises(UsageError, match="runs/npo holds a finished run; nothing to resume"):
        obliviate.unlearn(
            "models/target",
            world / "forget10.jsonl",
            world / "retain90.jsonl",
            "npo",
            Path("runs/npo"),
            options={"steps": 8},
            resume=True,
        )
    with pytest.raises(UsageError, match="runs/refusal_sft holds a finished run; nothing to resume"):
        obliviate.align("models/target", "refusal_sft", Path("runs/refusal_sft"), data=world, resume=True)


def test_import_obliviate_does_not_import_torch():
    code = "import obliviate, sys; assert 'torch' not in sys.modules, 'torch'; print(obliviate.__version__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    from obliviate.core.version import __version__

    assert done.stdout.strip() == __version__


def test_every_exported_name_is_a_documented_function():
    import obliviate

    assert obliviate.__all__ == [
        "unlearn",
        "evaluate",
        "align",
        "refusal_eval",
        "run_audit",
        "erase",
        "fit_guard",
        "load_guard",
    ]
    for name in obliviate.__all__:
        f = getattr(obliviate, name)
        assert callable(f) and f.__module__.startswith("obliviate."), name
        assert f.__doc__ and len(f.__doc__.split()) > 10, f"{name} has no real docstring"
    assert set(obliviate.__all__) <= set(dir(obliviate))
    with pytest.raises(AttributeError, match="no_such_name"):
        obliviate.no_such_name  # noqa: B018


def test_the_api_names_are_the_functions_the_commands_call():
    import obliviate
    from obliviate.audit.guard_fit import fit_guard
    from obliviate.audit.runner import run_audit
    from obliviate.diffusion.run import erase
    from obliviate.guards.base import load_guard
    from obliviate.refusal.run import run_align, run_refusal_eval
    from obliviate.unlearning.evaluate import run_eval
    from obliviate.unlearning.run import run_unlearn

    assert [getattr(obliviate, name) for name in obliviate.__all__] == [
        run_unlearn,
        run_eval,
        run_align,
        run_refusal_eval,
        run_audit,
        erase,
        fit_guard,
        load_guard,
    ]
    imported = {}
    for command in ("unlearning", "refusal", "audit", "guard", "diffusion"):
        tree = ast.parse((ROOT / "src" / "obliviate" / "cli" / f"{command}.py").read_text(encoding="utf-8"))
        imported[command] = {
            (node.module, a.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names
        }
    assert {("obliviate.unlearning.run", "run_unlearn"), ("obliviate.unlearning.evaluate", "run_eval")} <= imported[
        "unlearning"
    ]
    assert {("obliviate.refusal.run", "run_align"), ("obliviate.refusal.run", "run_refusal_eval")} <= imported[
        "refusal"
    ]
    assert ("obliviate.audit.runner", "run_audit") in imported["audit"]
    assert ("obliviate.audit.guard_fit", "fit_guard") in imported["guard"]
    assert ("obliviate.diffusion.run", "erase") in imported["diffusion"]
