"""Atomic state: rotating checkpoints, verified resume, damaged checkpoint files, model directories that never
look finished when they are not."""

import copy
import json
import os
import pathlib
import shutil

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obliviate.core import checkpoint
from obliviate.core.errors import UsageError
from obliviate.data.schema import load_qa
from obliviate.engine.train import TrainConfig, train
from obliviate.models.load import check_model_dir, load_model, model_dir_complete, save_model
from obliviate.unlearning.methods import METHODS
from obliviate.unlearning.run import idk_pool, unlearning_parts
from tests.cli.test_cli import run_cli

STEPS = 4  # checkpoints after steps 1, 2 and 3


class Crash(BaseException):
    """A kill: nothing catches it."""


def killed(*a, **k):
    """Stands in for a function the kill interrupts."""
    raise Crash("killed")


@pytest.fixture(scope="module")
def parts(world_dir):
    return unlearning_parts(
        load_qa(world_dir / "forget10.jsonl")[:8], load_qa(world_dir / "retain90.jsonl")[:16], idk_pool(None), seed=0
    )


@pytest.fixture(scope="module")
def base(target_dir):
    return load_model(str(target_dir))


def _run(base, parts, out=None, resume=False, steps=None):
    model, tok = copy.deepcopy(base[0]), base[1]
    cfg = TrainConfig(forget_batch_size=2, retain_batch_size=2, checkpoint_every=1, progress=False)
    return train(
        model,
        tok,
        METHODS.get("grad_ascent").from_options({"steps": STEPS}),
        parts,
        cfg,
        out=out,
        resume=resume,
        on_step=lambda s, m: steps.append(s) if steps is not None else None,
    )


class Ops:
    """Wraps every file operation a save makes under `root` (renames, deletes, file writes): records them and,
    at operation `crash_at`, does part of it (half a file written, one file of a tree deleted) and crashes."""

    def __init__(self, monkeypatch, root, crash_at=None):
        self.root, self.crash_at, self.log = str(root), crash_at, []
        real = {
            "replace": os.replace,
            "rename": os.rename,
            "rmtree": shutil.rmtree,
            "save_file": safetensors.torch.save_file,
            "write_text": pathlib.Path.write_text,
        }

        def wrap(name):
            def op(*args, **kwargs):
                path = str(args[0] if name != "save_file" else args[1])
                if not path.startswith(self.root):
                    return real[name](*args, **kwargs)
                target = str(args[1]) if name in ("replace", "rename") else ""
                self.log.append((name, path.removeprefix(self.root), target.removeprefix(self.root)))
                if len(self.log) - 1 != self.crash_at:
                    return real[name](*args, **kwargs)
                if name in ("save_file", "write_text"):  # cut short: half the file is on disk
                    real[name](*args, **kwargs)
                    with open(path, "r+b") as f:
                        f.truncate(os.path.getsize(path) // 2)
                elif name == "rmtree":
                    files = sorted(p for p in pathlib.Path(path).rglob("*") if p.is_file())
                    if files:
                        files[0].unlink()
                raise Crash(f"crash at {self.log[-1]}")

            return op

        for mod, name in (
            (os, "replace"),
            (os, "rename"),
            (shutil, "rmtree"),
            (safetensors.torch, "save_file"),
            (pathlib.Path, "write_text"),
        ):
            monkeypatch.setattr(mod, name, wrap(name))


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_crash_at_every_step_of_a_save_resumes_from_the_last_complete_checkpoint(base, parts, tmp_path, capsys):
    straight, res = _run(base, parts)
    with pytest.MonkeyPatch.context() as mp:
        ops = Ops(mp, tmp_path / "count")
        _run(base, parts, out=tmp_path / "count")
    made = [
        i
        for i, (name, src, dst) in enumerate(ops.log)
        if name in ("replace", "rename") and src.endswith("checkpoint.tmp") and dst.endswith("/checkpoint")
    ]
    assert len(made) == 3 and len(ops.log) >= 14, ops.log  # 3 saves: files, state, renames, deletes
    assert ops.log[made[1] + 1][:2] == ("rmtree", "/checkpoint.prev"), ops.log
    capsys.readouterr()
    # every operation of the first save (nothing to rotate) and of the second (which rotates, as all later ones
    # do); a resume from a crash in the second meets the third save with checkpoint.prev or checkpoint.tmp left
    for k in range(made[1] + 2):
        out = tmp_path / f"crash{k}"
        with pytest.MonkeyPatch.context() as mp:
            crashing = Ops(mp, out, crash_at=k)
            with pytest.raises(Crash):
                _run(base, parts, out=out)
        assert crashing.log == ops.log[: k + 1]
        last = sum(i < k for i in made)  # saves whose rename into place finished before the crash
        capsys.readouterr()
        steps, found = [], checkpoint.find(out)
        resumed, res2 = _run(base, parts, out=out, resume=True, steps=steps)
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert steps == list(range(last + 1, STEPS + 1)), (k, ops.log[k], steps)
        if last:
            assert err == [f"resume: continuing from step {last} ({found})"], (k, err)
        else:
            assert len(err) == 1 and err[0].startswith(f"resume: no complete checkpoint in {out}"), (k, err)
        assert _same_weights(resumed, straight), (k, ops.log[k])
        assert res2.history == res.history


def test_resume_with_nothing_to_resume_says_so_and_starts_at_step_0(base, parts, tmp_path, capsys):
    steps = []
    _run(base, parts, out=tmp_path / "none", resume=True, steps=steps)
    err = capsys.readouterr().err.strip().splitlines()
    assert steps == [1, 2, 3, 4] and err == [
        f"resume: no complete checkpoint in {tmp_path / 'none'}; starting from step 0"
    ]


# --- the command line: other inputs, damaged files ----------------------------------------------------------


@pytest.fixture()
def interrupted(target_dir, world_dir, tmp_path, monkeypatch, capsys):
    """An `unlearn` OUT killed after its last checkpoint (step 2 of 3), before its model was saved."""
    import obliviate.models.load as load

    args = [
        "unlearn",
        "--model",
        target_dir,
        "--forget",
        world_dir / "forget10.jsonl",
        "--retain",
        world_dir / "retain90.jsonl",
        "--method",
        "npo",
        "--steps",
        3,
        "--checkpoint-every",
        1,
        "--forget-batch-size",
        4,
        "--retain-batch-size",
        4,
        "--out",
        tmp_path / "u",
    ]

    with monkeypatch.context() as mp:
        mp.setattr(load, "save_model", killed)
        with pytest.raises(Crash):
            run_cli(args, capsys)
    capsys.readouterr()
    out = tmp_path / "u"
    assert checkpoint.read_state(out / "checkpoint")["step"] == 2 and not (out / "config.json").exists()
    return args, out


def _snapshot(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _one_line_exit_2(code, err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _with(args, flag, value):
    a = list(args)
    a[a.index(flag) + 1] = value
    return a


def test_resume_with_other_inputs_exits_2_naming_them(interrupted, target_dir, world_dir, tmp_path, capsys):
    args, out = interrupted
    other = tmp_path / "other"  # the same architecture and tokenizer, other weights (an oracle, say)
    net, tok = load_model(str(target_dir))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.01)
    save_model(net, tok, other)
    before = _snapshot(out)
    cases = [
        (_with(args, "--model", other), "(model differ)"),
        (_with(args, "--forget", world_dir / "forget05.jsonl"), "(forget data differ)"),
        (_with(_with(args, "--model", other), "--retain", world_dir / "retain95.jsonl"), "(model, retain data differ)"),
        (_with(args, "--method", "grad_diff"), "method"),
        ([*args, "--lr", "0.5"], "(lr differ)"),
        (_with(args, "--forget-batch-size", 2), "(forget_batch_size differ)"),
        ([*args, "--seed", 1], "seed"),
    ]
    for a, says in cases:
        line = _one_line_exit_2(*run_cli([*a, "--resume"], capsys)[::2])
        assert "cannot resume from" in line and says in line and str(out / "checkpoint") in line, line
        assert _snapshot(out) == before, "a refused resume changes nothing"
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0 and "resume: continuing from step 2" in err, err
    assert model_dir_complete(out) and not any((out / n).exists() for n in ("checkpoint", "checkpoint.prev"))
    assert len(json.loads((out / "train_log.json").read_text())["history"]) == 3


def test_damaged_checkpoint_files_exit_2_naming_the_file(interrupted, tmp_path, capsys):
    args, out = interrupted
    ckpt = out / "checkpoint"
    pristine = tmp_path / "pristine"
    shutil.copytree(ckpt, pristine)
    params, state = ckpt / "params.safetensors", ckpt / "state.json"

    def truncate(p, n):
        p.write_bytes(p.read_bytes()[:n])

    good_state = state.read_text()
    damage = [  # (what, the file the line names)
        (lambda: truncate(params, params.stat().st_size // 2), params),  # a truncated params.safetensors
        (lambda: truncate(params, 5), params),
        (lambda: truncate(ckpt / "optimizer.safetensors", 100), ckpt / "optimizer.safetensors"),
        (lambda: state.write_text('{"step": 2, "history": [{"step"'), state),  # a malformed state.json
        (lambda: state.write_bytes(b"\xff\xfe{}"), state),
        (lambda: state.write_text("[1]"), state),
        (lambda: state.write_text(good_state.replace('"step": 2', '"step": "2"', 1)), state),
        (lambda: state.unlink(), state),
        (lambda: (ckpt / "optimizer.safetensors").unlink(), ckpt / "optimizer.safetensors"),
    ]

    def foreign_tensor():  # a whole file, recorded in state.json, holding a tensor the model does not have
        renamed = {k + "x": v for k, v in safetensors.torch.load_file(str(params)).items()}
        safetensors.torch.save_file(renamed, str(params))
        doc = json.loads(good_state)
        doc["files"]["params.safetensors"] = params.stat().st_size
        state.write_text(json.dumps(doc))

    def past_the_end():  # a consistent state.json whose step is the run's last: nothing would be left to do
        doc = json.loads(good_state)
        doc["history"].append(dict(doc["history"][-1], step=3))
        doc["step"] = 3
        state.write_text(json.dumps(doc))

    damage += [
        (foreign_tensor, params),
        (past_the_end, state),
        (lambda: state.write_text(good_state.replace('"loss"', '"lost"', 1)), state),
    ]
    for hurt, named in damage:
        shutil.rmtree(ckpt)
        shutil.copytree(pristine, ckpt)
        hurt()
        line = _one_line_exit_2(*run_cli([*args, "--resume"], capsys)[::2])
        assert str(named) in line and "damaged checkpoint file" in line, line
        assert not (out / "config.json").exists() and not (out / "train_log.json").exists()


def test_align_resume_continues_with_added_tokens_and_refuses_another_model(
    target_dir, world_dir, tmp_path, monkeypatch, capsys
):
    """refusal_tokens adds tokens, whose new embedding rows start at random: the checkpoint hashes the model as
    loaded, so the same --model resumes and another one is refused."""
    import obliviate.models.load as load

    out = tmp_path / "a"
    args = [
        "align",
        "refusal_tokens",
        "--model",
        target_dir,
        "--data",
        world_dir,
        "--steps",
        26,
        "--batch-size",
        2,
        "--out",
        out,
    ]  # align checkpoints every 25 steps

    with monkeypatch.context() as mp:
        mp.setattr(load, "save_model", killed)
        with pytest.raises(Crash):
            run_cli(args, capsys)
    assert checkpoint.read_state(out / "checkpoint")["step"] == 25
    other = tmp_path / "other"
    net, tok = load_model(str(target_dir))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01)
    save_model(net, tok, other)
    record = (out / "align.json").read_bytes()
    line = _one_line_exit_2(*run_cli([*_with(args, "--model", other), "--resume"], capsys)[::2])
    assert "(model differ)" in line and (out / "align.json").read_bytes() == record, line
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0 and "resume: continuing from step 25" in err, err
    assert model_dir_complete(out) and not (out / "checkpoint").exists()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
            lambda c: (
                st.lists(c, max_size=4)
                | st.dictionaries(st.sampled_from(["step", "history", "meta", "files", "x"]), c, max_size=5)
            ),
            max_leaves=12,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_any_state_json_reads_or_is_one_usage_error(tmp_path, raw):
    (tmp_path / "state.json").write_bytes(raw)
    try:
        state = checkpoint.read_state(tmp_path)
    except UsageError as e:
        assert "\n" not in str(e) and str(tmp_path / "state.json") in str(e)
    else:
        assert type(state["step"]) is int and state["step"] >= 0 and isinstance(state["meta"], dict)
        assert isinstance(state["history"], list) and len(state["history"]) == state["step"]


# --- model directories ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("into", ["new", "run"], ids=["new-dir", "dir-with-run-files"])
def test_a_model_save_cut_at_any_step_never_looks_finished(into, base, tmp_path):
    """save_model into a new directory (renamed in whole) or into a run's OUT (files renamed in, config.json
    last): a crash at any of its renames leaves a directory that check_model_dir and bench --resume refuse, and
    the next save completes it."""
    model, tok = base

    def fresh(name):
        d = tmp_path / name
        if into == "run":
            d.mkdir()
            (d / "unlearn.json").write_text("{}")
        return d

    d = fresh("count")
    with pytest.MonkeyPatch.context() as mp:
        ops = Ops(mp, tmp_path)
        save_model(model, tok, d)
    assert model_dir_complete(d) and ops.log and all(op[0] == "replace" for op in ops.log), ops.log
    assert len(ops.log) == (1 if into == "new" else len([p for p in d.iterdir() if p.name != "unlearn.json"]))
    for k in range(len(ops.log)):
        d = fresh(f"m{k}")
        with pytest.MonkeyPatch.context() as mp:
            Ops(mp, tmp_path, crash_at=k)
            with pytest.raises(Crash):
                save_model(model, tok, d)
        assert not model_dir_complete(d)
        if d.exists():
            with pytest.raises(UsageError, match="no config.json"):
                check_model_dir(str(d))
        save_model(model, tok, d)  # bench --resume retrains it and saves again
        assert model_dir_complete(d) and not (d / ".model.tmp").exists()
        assert into == "new" or (d / "unlearn.json").read_text() == "{}"


def test_model_dir_complete_refuses_truncated_weights(target_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(target_dir, d)
    assert model_dir_complete(d)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])  # an older save, cut short after config.json
    assert not model_dir_complete(d) and (d / "config.json").is_file()
