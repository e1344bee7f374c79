"""An audit killed with SIGKILL mid-attack and resumed gives the figures of an uninterrupted run: finished attacks
are read back from progress.json, and a search attack continues from its own findings (behaviours already done
are not searched again)."""

import json
import os
import signal
import subprocess
import time

from tests.cli.test_cli import _cli, assert_bad_input


def _figures(out):
    doc = json.loads((out / "audit.json").read_text())
    return {name: {r: v for r, v in entry.items() if r != "seconds"} for name, entry in doc["attacks"].items()}


def _strip_times(figs):
    drop = ("mean_seconds",)
    return {a: {r: {k: v for k, v in f.items() if k not in drop} for r, f in e.items()} for a, e in figs.items()}


def test_audit_killed_mid_search_resumes_to_the_same_figures(target_dir, world_dir, tmp_path):
    base = ["audit", target_dir, "--suite", "refusal", "--data", world_dir, "--attacks", "templates,random_search"]
    base += ["--option", "templates.templates=2", "--option", "random_search.behaviours=6"]
    base += ["--option", "random_search.iterations=30", "--max-new-tokens", "8", "--threads", "1"]
    cmd, env = _cli(*base, "--out", tmp_path / "straight")
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    cmd, env = _cli(*base, "--out", killed)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = killed / "artifacts" / "random_search" / "model" / "findings.jsonl"
    deadline = time.time() + 300
    # kill once templates is finished (progress.json) and the search has finished at least one behaviour
    while time.time() < deadline and proc.poll() is None:
        if found.is_file() and found.read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "audit.json").exists(), "the audit finished before it could be killed"
    progress = json.loads((killed / "progress.json").read_text())
    assert list(progress["attacks"]) == ["templates"]
    done = found.read_text().count("\n")
    assert 1 <= done < 6

    cmd, env = _cli(*base, "--out", killed, "--resume")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert _strip_times(_figures(killed)) == _strip_times(_figures(tmp_path / "straight"))
    # the behaviours searched before the kill were read back, not searched again
    assert found.read_text().count("\n") == 6


def test_resume_needs_an_audit_there(target_dir, world_dir, tmp_path, capsys):
    out = tmp_path / "empty"
    args = ["audit", target_dir, "--suite", "refusal", "--data", world_dir, "--attacks", "templates", "--resume"]
    assert_bad_input([*args, "--out", out], capsys, out, "holds no audit to resume")
