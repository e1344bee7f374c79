"""The run registry (obliviate.runs, `obliviate runs ...`): schema and migrations, bad databases left untouched,
two writing processes, rebuild after loss, the CLI hook. Fast: no model is trained."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer

import obliviate.cli.app as app_module
from obliviate.cli.runs import runs_app
from obliviate.core.errors import UsageError
from obliviate.runs import RunStore, db
from obliviate.runs.results import RUN_FILE, data_hash, metrics_of, read_results
from tests.cli.test_cli import run_cli


@pytest.fixture
def reg_path(tmp_path, monkeypatch):
    p = tmp_path / "reg" / "registry.sqlite"
    monkeypatch.setenv("OBLIVIATE_REGISTRY", str(p))
    return p


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def results_doc(runs: dict, **extra) -> dict:
    return {
        "obliviate_version": "0",
        "created": "2026-11-28T10:00:00+00:00",
        "config": {"seed": 0},
        "results": runs,
        "higher_is_better": {"x": True},
        "n_samples": {"forget": 3},
        **extra,
    }


# --- a fake CLI: commands that write results, fail or get interrupted, recorded by the real main() hook -------

fake = typer.Typer()
fake.add_typer(runs_app, name="runs")


@fake.command()
def ok(out: Path = typer.Option(...), method: str = typer.Option("npo"), data: Path = typer.Option(None)):
    out.mkdir(parents=True)
    (out / "results.json").write_text(
        json.dumps(
            results_doc(
                {
                    "target": {"forget_quality": 1e-5, "model_utility": 0.6},
                    "npo": {"forget_quality": 0.4, "model_utility": float("nan")},
                },
                wall_seconds=3.5,
            )
        )
    )
    (out / "plot.png").write_bytes(b"png")


@fake.command()
def boom(out: Path = typer.Option(...)):
    out.mkdir(parents=True)
    raise RuntimeError("disk on fire")


@fake.command()
def refuse(out: Path = typer.Option(...)):
    raise UsageError("--out: bad input")


@fake.command()
def stop(out: Path = typer.Option(...)):
    raise KeyboardInterrupt


@pytest.fixture
def fake_cli(monkeypatch, reg_path):
    monkeypatch.setattr(app_module, "app", fake)
    return reg_path


def runs_json(capsys, *args) -> list[dict]:
    code, out, err = run_cli(["runs", "ls", "--json", *args], capsys)
    assert code == 0, err
    return json.loads(out)


# --- schema ---------------------------------------------------------------------------------------------------


def test_schema_created_versioned_and_wal(tmp_path):
    p = tmp_path / "sub" / "r.sqlite"
    with RunStore(p) as reg:
        run_id = reg.insert_run({"command": "eval"}, {"a/b": 1.0}, [("json", "/x/results.json")])
        assert reg.get(run_id[:12])["metrics"] == {"a/b": 1.0}
    con = sqlite3.connect(p)
    assert con.execute("PRAGMA user_version").fetchone()[0] == db.schema_version() == 1
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs", "metrics", "artifacts"} <= tables


def test_older_database_is_upgraded_in_place(tmp_path, monkeypatch):
    p = tmp_path / "r.sqlite"
    con = sqlite3.connect(p)  # a version-0 database someone already keeps a table in
    con.execute("CREATE TABLE notes (t TEXT)")
    con.execute("INSERT INTO notes VALUES ('keep me')")
    con.commit()
    con.close()
    with RunStore(p) as reg:
        run_id = reg.insert_run({"command": "eval", "status": "done"}, {"m": 2.0})
    # a later release adds a column: append a migration, as a real upgrade would
    monkeypatch.setattr(db, "MIGRATIONS", [*db.MIGRATIONS, "ALTER TABLE runs ADD COLUMN note TEXT"])
    with RunStore(p) as reg:
        assert reg.get(run_id)["metrics"] == {"m": 2.0} and reg.get(run_id)["note"] is None
    con = sqlite3.connect(p)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 2
    assert con.execute("SELECT t FROM notes").fetchall() == [("keep me",)]


def _newer(p: Path):
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE runs (id TEXT)")
    con.execute(f"PRAGMA user_version = {db.schema_version() + 1}")
    con.commit()
    con.close()


def _garbage(p: Path):
    p.write_bytes(b"this is not a database\n" * 200)


def _truncated(p: Path):
    with RunStore(p) as reg:
        for _ in range(100):
            reg.insert_run({"command": "x", "status": "done"}, {f"m{j}": j for j in range(20)})
    con = sqlite3.connect(p)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "make, words", [(_newer, "newer"), (_garbage, "not a usable SQLite"), (_truncated, "registry")]
)
def test_bad_database_exits_2_and_is_left_untouched(tmp_path, monkeypatch, capsys, make, words):
    p = tmp_path / "r.sqlite"
    make(p)
    before = sha(p)
    with pytest.raises(UsageError, match=words):
        RunStore(p)
    for args in (["runs", "ls"], ["runs", "doctor", "--json"], ["runs", "rebuild", str(tmp_path)]):
        code, out, err = run_cli([*args, "--registry", p], capsys)
        assert code == 2 and out == "", err
        assert words in one_line_error(err)
    # a command with --out still runs; the registry problem is one warning line
    monkeypatch.setenv("OBLIVIATE_REGISTRY", str(p))
    monkeypatch.setattr(app_module, "app", fake)
    code, _, err = run_cli(["ok", "--out", tmp_path / "o"], capsys)
    assert code == 0 and one_line_error(err).startswith("warning: run registry")
    assert sha(p) == before


# --- concurrency ----------------------------------------------------------------------------------------------

WRITER = """
import sys, time
from obliviate.runs import RunStore
path, tag, t0 = sys.argv[1], sys.argv[2], float(sys.argv[3])
while time.time() < t0:
    time.sleep(0.005)
for i in range(50):
    reg = RunStore(path)  # a fresh connection each time, as separate commands would
    run_id = reg.insert_run({"command": "bench", "method": tag})
    reg.record_results(run_id, "/nonexistent")
    reg.update_run(run_id, status="done")
    with reg.write() as con:
        con.executemany("INSERT INTO metrics VALUES (?, ?, ?)", [(run_id, f"m{j}", i + j) for j in range(5)])
    reg.close()
"""


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    p = tmp_path / "r.sqlite"
    RunStore(p).close()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    t0 = time.time() + 2.0  # both start writing at the same moment, after their imports
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(p), tag, str(t0)], env=env, stderr=subprocess.PIPE, text=True
        )
        for tag in ("a", "b")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    with RunStore(p) as reg:
        runs = reg.runs()
        assert len(runs) == 100 and {r["status"] for r in runs} == {"done"}
        assert sorted(r["method"] for r in runs) == ["a"] * 50 + ["b"] * 50
        assert sum(len(m) for m in reg.all_metrics().values()) == 500
        assert reg.integrity() == "ok"


# --- results files --------------------------------------------------------------------------------------------


def test_metric_names_and_data_hash(tmp_path):
    doc = results_doc({"target": {"fq": 0.5, "flag": True, "name": "x"}}, wall_seconds=2, seconds={"target": 1.5})
    assert metrics_of(doc, "results.json") == {"target/fq": 0.5, "wall_seconds": 2.0, "seconds/target": 1.5}
    audit = {"config": {}, "attacks": {"prefill": {"model": {"asr": 0.25}}}, "skipped": {"x": "why"}}
    assert metrics_of(audit, "audit.json") == {"audit/attacks/prefill/model/asr": 0.25}
    lb = {"leaderboard": {"forget10": {"npo": {"fq": [0.1, 0.01]}}}, "results": {"npo@s0": {"fq": 0.1}}}
    assert metrics_of(lb, "leaderboard.json") == {
        "leaderboard/forget10/npo/fq/0": 0.1,
        "leaderboard/forget10/npo/fq/1": 0.01,
        "npo@s0/fq": 0.1,
    }
    d = tmp_path / "data"
    d.mkdir()
    (d / "a.jsonl").write_text("1\n")
    h = data_hash([d, tmp_path / "missing"])
    assert h == data_hash([d]) and h is not None and data_hash([tmp_path / "missing"]) is None
    (d / "a.jsonl").write_text("2\n")
    assert data_hash([d]) != h


# --- the CLI hook ---------------------------------------------------------------------------------------------


def test_hook_records_done_run_with_metrics(fake_cli, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("{}\n")
    code, _, err = run_cli(["ok", "--out", tmp_path / "o", "--method", "simnpo", "--data", data], capsys)
    assert code == 0 and err == ""
    [run] = runs_json(capsys)
    assert run["status"] == "done" and run["command"] == "ok" and run["method"] == "simnpo"
    assert run["argv"][:2] == ["obliviate", "ok"] and run["pid"] == os.getpid() and run["ended"]
    assert run["metrics"] == {
        "target/forget_quality": 1e-5,
        "target/model_utility": 0.6,
        "npo/forget_quality": 0.4,
        "npo/model_utility": None,
        "wall_seconds": 3.5,
    }
    assert run["data_hash"] == data_hash([data]) and run["config_hash"] and run["versions"]["obliviate"]
    code, out, _ = run_cli(["runs", "show", run["id"], "--json"], capsys)
    kinds = {a["kind"] for a in json.loads(out)["artifacts"]}
    assert code == 0 and kinds == {"json", "png"}
    assert json.loads((tmp_path / "o" / RUN_FILE).read_text())["run"]["id"] == run["id"]


def test_hook_records_the_typed_line_and_the_load_dtype_is_configuration(fake_cli, tmp_path, capsys, monkeypatch):
    from obliviate.runs.hook import describe
    from obliviate.runs.results import results_document

    monkeypatch.setenv("OBLIVIATE_DTYPE", "float32")  # restored after the test: main() sets it from --dtype
    for name, extra in (("b", ["--dtype", "bf16"]), ("c", ["--quiet"])):
        code, _, err = run_cli(["ok", "--out", tmp_path / name, *extra], capsys)
        assert code == 0, err
    runs = {Path(r["out_dir"]).name: r for r in runs_json(capsys)}
    assert runs["b"]["argv"][-2:] == ["--dtype", "bf16"] and runs["c"]["argv"][-1] == "--quiet"
    hashes, configs = [], []
    for dtype in ("float32", "bfloat16"):
        monkeypatch.setenv("OBLIVIATE_DTYPE", dtype)
        hashes.append(describe("ok", {"method": "npo"}, set())["config_hash"])
        configs.append(results_document({"seed": 0}, {}, {})["config"])
    assert hashes[0] != hashes[1] and configs == [{"seed": 0}, {"seed": 0, "dtype": "bfloat16"}]


def test_hook_failures_and_bad_input(fake_cli, tmp_path, capsys):
    code, _, err = run_cli(["refuse", "--out", tmp_path / "r"], capsys)  # refused before writing: no run
    assert code == 2 and one_line_error(err) == "error: --out: bad input"
    code, _, err = run_cli(["ok", "--out", tmp_path / "o", "--no-such-option"], capsys)
    assert code == 2 and "No such option" in one_line_error(err)
    assert runs_json(capsys) == []
    with pytest.raises(RuntimeError):
        run_cli(["boom", "--out", tmp_path / "b"], capsys)
    run_cli(["stop", "--out", tmp_path / "s"], capsys)
    runs = {r["command"]: r for r in runs_json(capsys)}
    assert runs["boom"]["status"] == "failed" and runs["boom"]["error"] == "RuntimeError: disk on fire"
    assert runs["stop"]["status"] == "interrupted" and set(runs) == {"boom", "stop"}


def test_real_command_recorded_and_bad_input_leaves_no_row(reg_path, tmp_path, capsys):
    out = tmp_path / "world"
    code, _, err = run_cli(["world", "--out", out], capsys)
    assert code == 0, err
    code, _, err = run_cli(["world", "--out", out], capsys)  # not empty: refused, nothing ran
    assert code == 2, err
    [run] = runs_json(capsys)
    assert run["command"] == "world" and run["status"] == "done" and run["out_dir"] == str(out.resolve())
    code, out_text, _ = run_cli(["runs", "show", run["id"], "--json"], capsys)
    assert any(a["path"].endswith("forget10.jsonl") for a in json.loads(out_text)["artifacts"])


def test_registry_off_records_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("OBLIVIATE_REGISTRY", "off")
    monkeypatch.setattr(app_module, "app", fake)
    code, _, _ = run_cli(["ok", "--out", tmp_path / "o"], capsys)
    assert code == 0 and not (tmp_path / "o" / RUN_FILE).exists()
    code, _, err = run_cli(["runs", "ls"], capsys)
    assert code == 2 and "off" in one_line_error(err)


# --- rebuild --------------------------------------------------------------------------------------------------


def test_rebuild_after_deleting_the_database_gives_the_same_runs(fake_cli, tmp_path, capsys):
    root = tmp_path / "runs"
    run_cli(["ok", "--out", root / "a"], capsys)
    run_cli(["ok", "--out", root / "b" / "c", "--method", "idk_dpo"], capsys)
    (root / "d").mkdir()  # written by hand (or by an obliviate that had no registry): no run record
    (root / "d" / "audit.json").write_text(
        json.dumps(
            {
                "created": "2026-11-27T09:00:00+00:00",
                "config": {"suite": "world"},
                "attacks": {"relearn": {"model": {"fq": 0.2}}},
            }
        )
    )

    def snapshot():
        return {
            r["out_dir"]: r
            | {"artifacts": json.loads(run_cli(["runs", "show", r["id"], "--json"], capsys)[1])["artifacts"]}
            for r in runs_json(capsys)
        }

    code, out, _ = run_cli(["runs", "rebuild", root, "--json"], capsys)
    assert code == 0 and len(json.loads(out)["added"]) == 1 and len(json.loads(out)["skipped"]) == 2
    live = snapshot()
    for suffix in ("", "-wal", "-shm"):
        Path(str(fake_cli) + suffix).unlink(missing_ok=True)
    code, out, _ = run_cli(["runs", "rebuild", root, "--json"], capsys)
    assert code == 0 and len(json.loads(out)["added"]) == 3
    assert snapshot() == live
    d = live[str((root / "d").resolve())]
    assert d["command"] == "audit" and d["suite"] == "world" and d["metrics"] == {"audit/attacks/relearn/model/fq": 0.2}
    code, out, _ = run_cli(["runs", "rebuild", root, "--json"], capsys)  # idempotent
    assert json.loads(out)["added"] == [] and len(runs_json(capsys)) == 3
    code, _, err = run_cli(["runs", "rebuild", tmp_path / "nope"], capsys)
    assert code == 2 and "not a directory" in one_line_error(err)


# --- the runs commands ----------------------------------------------------------------------------------------


def test_ls_show_compare_rm(fake_cli, tmp_path, capsys):
    run_cli(["ok", "--out", tmp_path / "a", "--method", "npo"], capsys)
    run_cli(["ok", "--out", tmp_path / "b", "--method", "simnpo"], capsys)
    a, b = (r["id"] for r in runs_json(capsys))
    code, out, _ = run_cli(["runs", "ls"], capsys)
    assert code == 0 and a in out and b in out and "forget_quality" in out
    # the runs inside one results file (target, npo) get a line each
    lines = [ln for ln in out.splitlines() if "target" in ln or " npo " in ln or "│ npo" in ln]
    assert sum("target" in ln for ln in lines) == 2 and any("forget_quality 1e-05" in ln for ln in lines)
    assert [r["id"] for r in runs_json(capsys, "--method", "sim*")] == [b]
    assert len(runs_json(capsys, "--since", "1h")) == 2 and runs_json(capsys, "--since", "2999-01-01") == []
    code, _, err = run_cli(["runs", "ls", "--since", "yesterday"], capsys)
    assert code == 2 and "--since" in one_line_error(err)

    code, out, _ = run_cli(["runs", "show", a], capsys)
    assert code == 0 and "npo/forget_quality" in out and "results.json" in out
    code, _, err = run_cli(["runs", "show", a[:-1] + "x"], capsys)
    assert code == 2 and f"did you mean {a}" in one_line_error(err)
    code, _, err = run_cli(["runs", "show", a[:8]], capsys)  # both runs start with the same date
    assert code == 2 and "matches 2 runs" in one_line_error(err)

    code, out, _ = run_cli(["runs", "compare", a, b, "--json"], capsys)
    cmp = json.loads(out)
    assert code == 0 and [r["id"] for r in cmp["runs"]] == [a, b]
    assert cmp["metrics"]["npo/forget_quality"] == {a: 0.4, b: 0.4}
    code, out, _ = run_cli(["runs", "compare", a, b], capsys)
    assert code == 0 and "target/model_utility" in out
    code, _, err = run_cli(["runs", "compare", a], capsys)
    assert code == 2 and "at least two" in one_line_error(err)

    code, _, err = run_cli(["runs", "rm", a, "nope"], capsys)  # one unknown id: nothing removed
    assert code == 2 and len(runs_json(capsys)) == 2
    code, out, _ = run_cli(["runs", "rm", a, "--json"], capsys)
    assert code == 0 and json.loads(out) == {"removed": [a]}
    assert [r["id"] for r in runs_json(capsys)] == [b]


def test_missing_registry_reads_as_empty(reg_path, capsys):
    code, out, _ = run_cli(["runs", "ls"], capsys)
    assert code == 0 and "no runs" in out and not reg_path.exists()
    code, _, err = run_cli(["runs", "show", "abc"], capsys)
    assert code == 2 and "does not exist" in one_line_error(err)


def test_doctor_marks_dead_runs_interrupted(reg_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with RunStore(reg_path) as reg:
        gone = reg.insert_run({"command": "eval", "pid": dead.pid, "host": os.uname().nodename})
        alive = reg.insert_run({"command": "eval", "pid": os.getpid(), "host": os.uname().nodename})
        far = reg.insert_run({"command": "eval", "pid": 1, "host": "elsewhere", "started": "2026-01-01T00:00:00+00:00"})
    code, out, _ = run_cli(["runs", "doctor", "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and sorted(report["interrupted"]) == sorted([gone, far]) and report["integrity"] == "ok"
    statuses = {r["id"]: r["status"] for r in runs_json(capsys)}
    assert statuses == {gone: "interrupted", alive: "running", far: "interrupted"}
    code, out, _ = run_cli(["runs", "doctor"], capsys)
    assert code == 0 and "0 marked interrupted" in out


def test_read_results_of_a_file_output(tmp_path):
    f = tmp_path / "preds.jsonl"
    f.write_text("{}\n")
    info = read_results(f)
    assert info["metrics"] == {} and info["artifacts"] == [("jsonl", str(f.resolve()))]
