"""No test is ever skipped: no skip or xfail in the code under tests/, a skip raised anyway fails, and what a test
needs from outside the clone (shared data, an optional extra) fails with one message naming it."""

import io
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from tests import conftest
from tests.conftest import require_extra, shared_data

TESTS = Path(__file__).resolve().parent
# pytest.skip, pytest.mark.skip / skipif, pytest.importorskip, pytest.mark.xfail / pytest.xfail, unittest's skips
FORBIDDEN = {"skip", "skipif", "importorskip", "xfail", "skipTest", "skipIf", "skipUnless"}


def _forbidden_names(source: str) -> list[tuple[int, str]]:
    """(line, name) of every forbidden name in the code; comments and strings (which may say "never skipped") are not
    code."""
    return [
        (t.start[0], t.string)
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type == tokenize.NAME and t.string in FORBIDDEN
    ]


def test_the_scan_finds_each_form():
    src = (
        'import pytest\nfrom pytest import importorskip\n@pytest.mark.skipif(True, reason="x")\n'
        '@pytest.mark.xfail\ndef test_a():\n    pytest.skip("why")  # never skipped\n    """pytest.skip"""\n'
    )
    assert _forbidden_names(src) == [(2, "importorskip"), (3, "skipif"), (4, "xfail"), (6, "skip")]


def test_no_skip_or_xfail_under_tests():
    files = sorted(TESTS.rglob("*.py"))
    assert len(files) > 50 and Path(__file__) in files
    found = [
        f"{f.relative_to(TESTS.parent)}:{line}: {name}"
        for f in files
        for line, name in _forbidden_names(f.read_text(encoding="utf-8"))
    ]
    assert not found, (
        "a test must fail, naming what is missing (tests/conftest.py: shared_data, require_extra, "
        "missing), never skip:\n" + "\n".join(found)
    )


def test_missing_shared_data_fails_naming_it(monkeypatch, tmp_path):
    assert shared_data("xstest/xstest_prompts.csv") == conftest.SHARED_DATA / "xstest" / "xstest_prompts.csv"
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path / "nowhere")
    with pytest.raises(pytest.fail.Exception) as e:
        shared_data("xstest/xstest_prompts.csv")
    msg = str(e.value)
    assert msg.startswith(f"missing shared data {tmp_path / 'nowhere' / 'xstest' / 'xstest_prompts.csv'}: "), msg
    assert "put ../shared beside the clone" in msg and "\n" not in msg
    assert not e.value.pytrace  # the message alone, no traceback


def test_missing_extra_fails_naming_it_and_the_make_target():
    assert require_extra("json", "dev") is __import__("json")
    with pytest.raises(pytest.fail.Exception) as e:
        require_extra("obliviate_no_such_package", "judge")
    msg = str(e.value)
    assert msg.startswith("missing optional extra `judge` (obliviate_no_such_package: "), msg
    assert "run `make test`, or `pip install -e '.[judge]'`" in msg


SKIPPING = """
import pytest


def test_skips():
    pytest.skip("gone")


@pytest.mark.xfail(reason="expected")
def test_xfails():
    assert False


@pytest.mark.parametrize("x", [])
def test_empty_parameter_set(x):
    pass


def test_passes():
    pass
"""


def test_a_skip_raised_anyway_fails(tmp_path):
    """tests/conftest.py turns every skip and xfail into a failure, an empty parameter set's and a module's too."""
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    (tmp_path / "test_module_skip.py").write_text('import pytest\n\npytest.skip("all", allow_module_level=True)\n')
    (tmp_path / "none.ini").write_text("[pytest]\n")  # not the project's options
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.conftest",
            "--continue-on-collection-errors",
            "--rootdir",
            str(tmp_path),
            "-c",
            str(tmp_path / "none.ini"),
            str(tmp_path),
        ],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    tail = run.stdout.strip().splitlines()[-1]
    # errors: the module skipped at collection, and the empty parameter set, which skips in its setup
    assert run.returncode == 1 and tail.startswith("2 failed, 1 passed, 2 errors in"), run.stdout + run.stderr
    for what in (
        "test_skipping.py::test_skips was skipped (Skipped: gone)",
        "test_skipping.py::test_xfails was marked xfail (expected)",
        "test_skipping.py::test_empty_parameter_set[NOTSET] was skipped (Skipped: got empty parameter set for (x))",
        "test_module_skip.py was skipped (Skipped: all)",
    ):
        assert f"{what}, and the tests never skip" in run.stdout, (what, run.stdout)
