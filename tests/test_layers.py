"""Imports only go down: every import in src/obliviate (function-local ones included) goes to the importer's own
folder or to a folder below it in `obliviate.core.layers.LAYERS`; so no circle can run between folders."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from obliviate.core.layers import LAYERS, layer_of

SRC = Path(__file__).resolve().parents[1] / "src" / "obliviate"


def module_name(path: Path, root: Path = SRC) -> str:
    parts = ["obliviate", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = SRC) -> list[tuple[int, str]]:
    """(line, imported obliviate module or name) for every import statement in the file, at any depth."""
    name, out = module_name(path, root), []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "obliviate"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importer's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "obliviate":
                # `from obliviate import x` imports the folder x (or the root's own name x)
                out += [(node.lineno, f"{target}.{a.name}" if target == "obliviate" else target) for a in node.names]
    return out


def violations(root: Path = SRC) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        me = module_name(path, root)
        mine = layer_of(me)
        for line, target in imports(path, root):
            folder = target.split(".")[1] if "." in target else ""
            if folder and folder not in LAYERS:  # a name of the root package (e.g. `from obliviate import __version__`)
                target = "obliviate"
            theirs = layer_of(target)
            same = me.split(".")[1:2] == target.split(".")[1:2]
            if not same and theirs > mine:
                bad.append(f"{path.relative_to(root.parent)}:{line}: {me} imports {target}, a higher layer")
    return bad


def test_every_folder_has_a_layer():
    folders = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS), (
        f"folders without a layer: {folders - set(LAYERS)}; layers without a folder: {set(LAYERS) - folders}"
    )
    loose = sorted(p.name for p in SRC.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules outside every folder: {loose}"


def test_imports_only_go_down():
    bad = violations()
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


@pytest.mark.parametrize("where", ["module", "function"])
def test_an_upward_import_is_caught(tmp_path, where):
    """The check is not vacuous: a models -> guards import (top level or function-local) is reported."""
    for folder in ("models", "guards"):
        (tmp_path / "obliviate" / folder).mkdir(parents=True)
        (tmp_path / "obliviate" / folder / "__init__.py").write_text("")
    (tmp_path / "obliviate" / "__init__.py").write_text("")
    code = (
        "from obliviate.guards.base import attach_guards\n"
        if where == "module"
        else "def load():\n    from obliviate.guards.base import attach_guards\n"
    )
    (tmp_path / "obliviate" / "models" / "load.py").write_text(code)
    (tmp_path / "obliviate" / "guards" / "base.py").write_text("from obliviate.models.load import load\n")
    bad = violations(tmp_path / "obliviate")
    assert len(bad) == 1 and "obliviate.models.load imports obliviate.guards.base" in bad[0], bad
