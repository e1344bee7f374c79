"""An output never destroys an input: `obliviate.core.outputs` (the one gate every output goes through) and, for every
command with --out, an --out that contains or lies inside its inputs exits 2 and leaves them byte-identical."""

import hashlib
import json
import os

import pytest

from obliviate.core.errors import UsageError
from obliviate.core.outputs import MARKER, check_output, new_dir, output_dir, output_file, output_kind
from tests.cli.test_cli import run_cli
from tests.cli.test_cli_parser import COMMANDS


def snapshot(root):
    """Every file's bytes (hashed) and every directory under root, as a dict keyed by relative path."""
    state = {}
    for d, dirs, files in os.walk(root):
        for name in dirs:
            state[os.path.relpath(os.path.join(d, name), root)] = "dir"
        for name in files:
            p = os.path.join(d, name)
            with open(p, "rb") as f:
                state[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return state


# --- the function ------------------------------------------------------------------------------------------------


def test_marker_names_the_kind_and_parents_are_made(tmp_path):
    out = tmp_path / "a" / "b"
    with output_dir(out, "unlearn") as o:
        assert o == out and (out / MARKER).is_file()
        (o / "x.txt").write_text("x")
    assert output_kind(out) == "unlearn" and (out / "x.txt").read_text() == "x"
    with output_dir(tmp_path / "empty", "eval"):  # a new directory is fine, and so is an existing empty one
        pass
    (tmp_path / "existing").mkdir()
    with output_dir(tmp_path / "existing", "eval") as o:
        assert output_kind(o) == "eval"


def test_refuses_a_non_empty_directory_that_is_not_its_own(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    for kw in ({}, {"resume": True}, {"replace": True}):
        with pytest.raises(UsageError, match="not empty"):
            with output_dir(foreign, "demo:world" if kw.get("replace") else "unlearn", **kw):
                pass
    assert snapshot(foreign) == {"thesis.tex": hashlib.sha256(b"years of work").hexdigest()}

    with output_dir(tmp_path / "g", "guard"):
        pass
    with pytest.raises(UsageError, match="holds a `guard` output, not a `unlearn` one"):
        check_output(tmp_path / "g", "unlearn", resume=True)
    with pytest.raises(UsageError, match="continue it with --resume"):  # the same kind, but no --resume
        check_output(tmp_path / "g", "guard", resume=False)
    with pytest.raises(UsageError, match="choose a new --out"):  # a command that cannot resume
        check_output(tmp_path / "g", "guard")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        check_output(tmp_path / "file", "eval")


def test_resume_continues_and_replace_removes_only_a_marked_output(tmp_path):
    out = tmp_path / "u"
    with output_dir(out, "unlearn", resume=False) as o:
        (o / "checkpoint").mkdir()
    with output_dir(out, "unlearn", resume=True) as o:
        assert (o / "checkpoint").is_dir()  # continued, not replaced

    demo = tmp_path / "demo"
    with output_dir(demo, "demo:world", replace=True) as o:
        (o / "old.json").write_text("{}")
    with output_dir(demo, "demo:refusal", replace=True) as o:  # any demo replaces an earlier demo's output
        assert not (o / "old.json").exists() and output_kind(o) == "demo:refusal"
    with pytest.raises(UsageError, match="not an earlier demo's output"):
        check_output(out, "demo:world", replace=True)  # an unlearning output is not a demo's to remove
    legacy = tmp_path / "legacy"  # an earlier release's demo marker still counts
    legacy.mkdir()
    (legacy / ".obliviate-demo").write_text("written by `obliviate demo`\n")
    check_output(legacy, "demo:world", replace=True)


@pytest.mark.parametrize(
    "where,why",
    [
        ("same", "is the input"),
        ("parent", "contains the input"),
        ("child", "lies inside the input"),
        ("link", "is the input"),
        ("file", "contains the input"),
    ],
)
def test_refuses_an_out_that_is_contains_or_lies_inside_an_input(tmp_path, where, why):
    d = tmp_path / "D"
    (d / "model").mkdir(parents=True)
    (d / "model" / "config.json").write_text("{}")
    (d / "data.jsonl").write_text("{}\n")
    (tmp_path / "link").symlink_to(d / "model")
    out, inputs = {
        "same": (d / "model", [d / "model"]),
        "parent": (d, [d / "model"]),
        "child": (d / "model" / "sub", [d / "model"]),
        "link": (tmp_path / "link", [d / "model"]),
        "file": (d, [d / "data.jsonl"]),
    }[where]
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match=why):
        with output_dir(out, "unlearn", inputs=inputs):
            pass
    assert snapshot(tmp_path) == before
    check_output(tmp_path / "elsewhere", "unlearn", inputs=[d / "model", "HuggingFaceTB/SmolLM2-135M", None])


def test_a_failure_removes_only_what_this_invocation_created(tmp_path):
    parent = tmp_path / "runs"
    parent.mkdir()
    (parent / "other-run.txt").write_text("keep")
    with pytest.raises(UsageError):  # bad input: a new output goes, with the parents it made
        with output_dir(parent / "new" / "deep", "eval") as o:
            (o / "half.json").write_text("{")
            raise UsageError("bad line")
    assert not (parent / "new").exists() and (parent / "other-run.txt").read_text() == "keep"

    (parent / "empty").mkdir()  # an existing empty directory stays, emptied of what was written
    with pytest.raises(UsageError):
        with output_dir(parent / "empty", "eval") as o:
            (o / "half.json").write_text("{")
            raise UsageError("bad line")
    assert (parent / "empty").is_dir() and not any((parent / "empty").iterdir())

    with output_dir(parent / "u", "unlearn", resume=False) as o:  # a resumable output keeps its checkpoints
        (o / "checkpoint").mkdir()
    with pytest.raises(RuntimeError):
        with output_dir(parent / "u", "unlearn", resume=True) as o:
            raise RuntimeError("out of memory")
    with pytest.raises(UsageError):  # even on bad input, what an earlier run wrote stays
        with output_dir(parent / "u", "unlearn", resume=True) as o:
            raise UsageError("diverged")
    assert (parent / "u" / "checkpoint").is_dir()


def test_staged_output_appears_only_when_complete(tmp_path):
    out = tmp_path / "guard"
    with output_dir(out, "guard", staged=True) as tmp:
        assert tmp != out and not out.exists()
        (tmp / "guard.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "guard.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guard"]  # no temporary directory left
    with pytest.raises(RuntimeError):
        with output_dir(tmp_path / "g2", "guard", staged=True) as tmp:
            raise RuntimeError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guard"]


def test_a_saver_never_replaces_an_existing_directory(tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "guard.json").write_text("mine")
    with pytest.raises(UsageError, match="already exists"):
        with new_dir(tmp_path / "g", "a guard"):
            pass
    assert (tmp_path / "g" / "guard.json").read_text() == "mine"
    with output_dir(tmp_path / "fresh", "guard") as o:  # a directory output_dir made: written into directly
        with new_dir(o, "a guard") as d:
            assert d == o


def test_output_file_refuses_directories_and_inputs_and_writes_atomically(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text("{}\n")
    with pytest.raises(UsageError, match="is a directory"):
        with output_file(tmp_path):
            pass
    with pytest.raises(UsageError, match="is the input"):
        with output_file(src, inputs=[src]):
            pass
    with pytest.raises(UsageError, match="exists"):
        with output_file(src, overwrite=False):
            pass
    out = tmp_path / "sub" / "preds.jsonl"
    with output_file(out) as tmp:
        tmp.write_text("a\n")
        assert not out.exists()
    with pytest.raises(RuntimeError):
        with output_file(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert out.read_text() == "a\n" and sorted(p.name for p in out.parent.iterdir()) == ["preds.jsonl"]
    assert src.read_text() == "{}\n"


def test_other_ranks_share_the_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "checkpoint").mkdir()  # rank 0 may already have written here
    with output_dir(tmp_path / "o", "unlearn", resume=False) as o:
        assert o == tmp_path / "o"
    assert not (tmp_path / "o" / MARKER).exists()  # rank 0 marks
    with pytest.raises(UsageError, match="contains the input"):  # inputs are checked on every rank
        check_output(tmp_path, "unlearn", inputs=[tmp_path / "o"])


# --- every command with --out ------------------------------------------------------------------------------------

WITH_OUT = {" ".join(p) for p, c in COMMANDS if any("--out" in getattr(x, "opts", ()) for x in c.params)}

# command -> (its arguments with D as the directory holding the inputs, the inputs to create in D). An input whose
# name has a suffix is a file, else a directory with a file in it. A command that reads nothing gets a file of the
# user's in D instead: a non-empty directory that is not its own output.
CASES = {
    "world": ([], []),
    "bench": ([], []),
    "muse": ([], []),
    "demo": ([], []),
    "models get": (["smollm2-135m-instruct"], []),
    "prompts": (["advbench", "{D}/advbench.csv"], ["advbench.csv"]),
    "finetune": (["--data", "{D}/world"], ["world"]),
    "unlearn": (
        ["--model", "{D}/target", "--forget", "{D}/forget.jsonl", "--retain", "{D}/retain.jsonl", "--method", "npo"],
        ["target", "forget.jsonl", "retain.jsonl"],
    ),
    "eval": (["--model", "{D}/target", "--data", "{D}/world", "--oracle", "{D}/oracle"], ["target", "world", "oracle"]),
    "sweep": (
        [
            "--method",
            "npo",
            "--grid",
            "lr=1e-4",
            "--model",
            "{D}/target",
            "--oracle",
            "{D}/oracle",
            "--data",
            "{D}/world",
        ],
        ["target", "oracle", "world"],
    ),
    "align": (["refusal_sft", "--model", "{D}/target", "--data", "{D}/world"], ["target", "world"]),
    "refusal-eval": (["--model", "{D}/target", "--harmful", "advbench:{D}/advbench.csv"], ["target", "advbench.csv"]),
    "calibrate": (["{D}/target", "--data", "{D}/world"], ["target", "world"]),
    "audit": (["{D}/target", "--suite", "unlearning", "--data", "{D}/world"], ["target", "world"]),
    "erase": (["esd", "--model", "{D}/t2i", "--concept", "star"], ["t2i"]),
    "report": (["{D}/run"], ["run"]),
    "judge refusal": (["{D}/rows.jsonl"], ["rows.jsonl"]),
    "judge train": (["{D}/rows.jsonl", "--label-column", "label"], ["rows.jsonl"]),
    "models convert": (["--gguf", "{D}/model.gguf"], ["model.gguf"]),
    "guard fit": (["latent", "--model", "{D}/target", "--data", "{D}/world"], ["target", "world"]),
}
FILE_OUTPUTS = {"prompts", "report", "judge refusal"}


def test_every_command_with_out_has_a_case():
    assert set(CASES) == WITH_OUT, "a command with --out needs a case here (and must refuse before reading)"


def _build(d, inputs):
    d.mkdir()
    for name in inputs:
        p = d / name
        if "." in name:
            p.write_text("{}\n" if name.endswith((".json", ".jsonl")) else "a,b\n1,2\n")
        else:
            p.mkdir()
            (p / ("results.json" if name == "run" else "config.json")).write_text('{"results": {}}\n')
    if not inputs:
        (d / "notes.txt").write_text("the user's own file")


def _refused(argv, out, capsys):
    code, _, err = run_cli(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"--out {out}" in lines[0], lines[0]  # refused for its --out, not for some other reason


@pytest.mark.parametrize("command", sorted(CASES))
def test_an_out_around_or_inside_the_inputs_exits_2_and_changes_nothing(command, tmp_path, capsys):
    args, inputs = CASES[command]
    d = tmp_path / "D"
    _build(d, inputs)
    argv = [*command.split(), *(a.replace("{D}", str(d)) for a in args)]
    before = snapshot(tmp_path)
    _refused([*argv, "--out", d], d, capsys)  # --out contains the inputs (or is a user's non-empty directory)
    assert snapshot(tmp_path) == before
    if inputs and command not in FILE_OUTPUTS:  # --out inside an input
        inside = d / inputs[0] / "out"
        _refused([*argv, "--out", inside], inside, capsys)
        assert snapshot(tmp_path) == before


def test_the_reported_guard_fit_case_on_a_real_model(target_dir, world_dir, tmp_path, capsys):
    """`guard fit latent --model D/target --data D/world --out D` used to replace D with the guard."""
    import shutil

    d = tmp_path / "D"
    shutil.copytree(target_dir, d / "target")
    shutil.copytree(world_dir, d / "world")
    before = snapshot(d)
    _refused(["guard", "fit", "latent", "--model", d / "target", "--data", d / "world", "--out", d], d, capsys)
    assert snapshot(d) == before
    code, _, err = run_cli(
        ["guard", "fit", "latent", "--model", d / "target", "--data", d / "world", "--out", d / "target"], capsys
    )
    assert code == 2 and "is the input" in err and snapshot(d) == before
    guard = tmp_path / "guard"  # beside the inputs: written, marked, and never silently replaced
    fit = ["guard", "fit", "latent", "--model", d / "target", "--data", d / "world", "--out", guard]
    code, _, err = run_cli(fit, capsys)
    assert code == 0, err
    assert output_kind(guard) == "guard" and (guard / "guard.json").is_file() and snapshot(d) == before
    written = snapshot(guard)
    _refused(fit, guard, capsys)
    assert snapshot(guard) == written


def test_single_file_outputs_never_replace_an_input(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "p", "response": "I cannot help with that."}) + "\n")
    before = snapshot(tmp_path)
    _refused(["judge", "refusal", rows, "--out", rows], rows, capsys)
    assert snapshot(tmp_path) == before
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text('{"results": {}}\n')
    before = snapshot(tmp_path)
    _refused(["report", run, "--out", run / "results.json"], run / "results.json", capsys)
    assert snapshot(tmp_path) == before
