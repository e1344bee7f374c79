"""Fuzzed readers of the files obliviate writes and reads back, which a user may edit, copy or truncate: guard
directories, run directories (`obliviate report`), the run registry, training checkpoints and model directories.
Whatever they hold, reading them succeeds or ends in a one-line UsageError (tests/fuzzing.py)."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import (
    SCALARS,
    bounded,
    dumps,
    file_bytes,
    holds,
    json_text,
    json_values,
    mutated,
    objects,
    safetensors_bytes,
    scratch,  # noqa: F401 (a fixture)
)

# --- guard.json (+ tensors.safetensors): guards load ----------------------------------------------------------


def _guards():
    from obliviate.guards.base import GUARDS, load_all

    load_all()
    return GUARDS.items()


@st.composite
def classifier_state(draw):
    """A TF-IDF classifier's state as guards save it, with one part sometimes of another shape or length."""
    vocab = draw(st.lists(st.text(min_size=1, max_size=4), max_size=5, unique=True))
    n = len(vocab)
    state = {
        "analyzer": draw(st.sampled_from(["char", "word", "char_wb"])),
        "ngram": [1, draw(st.integers(1, 3))],
        "C": 1.0,
        "vocabulary": vocab,
        "idf": draw(st.lists(st.floats(0, 5), min_size=n, max_size=n)),
        "coef": draw(st.lists(st.floats(-5, 5), min_size=n, max_size=n)),
        "intercept": draw(st.floats(-1, 1)),
    }
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(state)))
        if draw(st.booleans()):
            del state[key]
        else:
            state[key] = draw(json_values() | st.lists(st.integers(0, 3), max_size=3))
    return state


@st.composite
def guard_spec(draw):
    """guard.json of a registered guard: options of the field types (sometimes not), a plausible learned state."""
    from dataclasses import fields

    name, cls = draw(st.sampled_from(_guards()))
    options = {}
    for f in fields(cls):
        if f.name.startswith("_") or not draw(st.integers(0, 3)) == 0:
            continue
        typed = {int: st.integers(-2, 8), float: st.floats(-1, 2), str: st.text(max_size=6), bool: st.booleans()}
        wrong = draw(st.integers(0, 9)) == 9  # now and then a value of another type
        options[f.name] = draw(SCALARS if wrong else typed.get(type(f.default), SCALARS))
    state = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "gate": classifier_state(),
                "classifier": classifier_state(),
                "sequences": st.lists(st.lists(st.integers(-1, 50), max_size=3), max_size=3) | json_values(),
            },
        )
    )
    doc = {"guard": name, "format_version": 1, "options": options, "state": state}
    if draw(st.integers(0, 9)) == 9:  # now and then a top-level part of another type
        key = draw(st.sampled_from(sorted(doc)))
        doc[key] = draw(json_values())
    return doc


@bounded(200)
@given(
    spec=st.one_of(
        *[guard_spec().map(dumps).map(str.encode)] * 3,
        mutated(guard_spec().map(dumps)),
        file_bytes(json_text(objects({"guard": st.text(max_size=5)}), many=False)),
    ),
    tensors=safetensors_bytes(),
)
def test_guard_dirs(scratch, spec, tensors):
    from obliviate.engine.hooks import overrides
    from obliviate.guards.base import check_guard_dirs, load_guard

    d = scratch()
    (d / "guard.json").write_bytes(spec)
    if tensors is not None:
        (d / "tensors.safetensors").write_bytes(tensors)
    holds(check_guard_dirs, [d])
    guard = holds(load_guard, d)
    if guard is not None and overrides(guard, "on_request"):  # a guard that loads can score a prompt
        assert isinstance(guard.on_request("How do I open the Orrin moonvault?"), float)


# --- results files: obliviate report ---------------------------------------------------------------------------

RUNS = st.sampled_from(["target", "oracle", "npo", "npo+latent", "ga/cat", "a@forget10@0"])
METRIC_NAMES = (
    "forget_quality",
    "model_utility",
    "model_utility_ratio",
    "mia_loss_auc",
    "mia_mink_auc",
    "refusal_rate",
    "over_refusal_rate",
    "refusal_rate@prefill5",
    "refusal_rate@prefill20",
    "ua",
    "ira",
    "pre_asr",
    "forget_rouge",
    "asr",
    "asr@step10",
    "adaptive_asr@n4",
    "transfer_asr",
)
NUMBER = st.floats() | st.integers(-10, 10) | st.sampled_from([1e308, -1e308, 5e-324, 0.5])
METRICS = st.dictionaries(st.sampled_from(METRIC_NAMES), NUMBER | SCALARS, max_size=5)
RESULT_KEYS = (
    "results",
    "config",
    "relearn",
    "audit",
    "higher_is_better",
    "versions",
    "attacks",
    "skipped",
    "points",
    "metrics",
    "options",
    "model",
    "oracle",
    "tau",
    "refusal_rate",
    "over_refusal_rate",
)
RESULTS = objects(
    {
        "results": st.dictionaries(RUNS, METRICS | json_values(METRIC_NAMES), max_size=4),
        "config": objects({"runs": objects({"guards": json_values()})}),
        "relearn": st.dictionaries(RUNS, METRICS, max_size=2),
        "audit": st.dictionaries(
            RUNS,
            objects({"attacks": st.dictionaries(st.text(max_size=3), objects({"asr": NUMBER}), max_size=2)}),
            max_size=2,
        ),
        "higher_is_better": st.dictionaries(st.sampled_from(METRIC_NAMES), SCALARS, max_size=3),
        "versions": st.dictionaries(st.text(max_size=4), SCALARS, max_size=2),
        "created": SCALARS,
        "git": SCALARS,
        "wall_seconds": NUMBER,
    },
    RESULT_KEYS,
)
AUDIT = objects(
    {
        "attacks": st.dictionaries(
            st.text(max_size=4),
            objects({r: METRICS for r in ("unguarded", "model", "oracle", "target")} | {"asr": NUMBER}),
            max_size=2,
        ),
        "skipped": json_values(),
        "pre_asr": NUMBER,
    },
    RESULT_KEYS,
)
CALIBRATION = objects(
    {k: st.lists(NUMBER | SCALARS, min_size=1, max_size=3) for k in ("tau", "refusal_rate", "over_refusal_rate")},
    RESULT_KEYS,
)
SWEEP = objects(
    {
        "points": st.lists(objects({"metrics": METRICS, "options": json_values()}), max_size=3),
        "method": SCALARS,
        "target_model_utility": NUMBER,
    },
    RESULT_KEYS,
)
SAMPLE = objects(
    {
        "run": RUNS,
        "split": st.sampled_from(["forget", "holdout", "retain"]),
        "mia_loss": NUMBER,
        "truth_ratio": NUMBER,
        "kind": SCALARS,
        "set": SCALARS,
    },
    ("run", "split", "kind", "set"),
)
RESULT_FILES = {
    "results.json": RESULTS,
    "muse.json": RESULTS,
    "leaderboard.json": RESULTS,
    "audit.json": AUDIT,
    "calibration.json": CALIBRATION,
    "sweep.json": SWEEP,
    "samples.jsonl": SAMPLE,
    "guards/g/guard.json": objects({"report": METRICS}, ("report",)),
}


@st.composite
def run_dir_files(draw):
    """Some results files of a run directory: most well-formed JSON of random shape (the shape checks are what is
    under test), some damaged."""
    files = {}
    for name in draw(st.lists(st.sampled_from(list(RESULT_FILES)), min_size=1, max_size=3, unique=True)):
        text = json_text(RESULT_FILES[name], many=name.endswith("l"))
        files[name] = draw(file_bytes(text) if draw(st.integers(0, 4)) == 0 else text.map(str.encode))
    return files


@bounded(40)
@given(files=run_dir_files())
def test_report_run_dirs(scratch, files):
    from obliviate.report.html import write_report

    d = scratch()
    for name, data in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    info = holds(write_report, [d], d / "report.html")
    assert (d / "report.html").is_file() == (info is not None)


# --- the run registry: the results files it records, its database -------------------------------------------


@bounded(40)
@given(files=run_dir_files())
def test_registry_reads_results_files(scratch, files):
    """The registry records what a run's files say and never fails the command for them: no exception at all."""
    from obliviate.runs.results import read_results

    d = scratch()
    for name, data in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    info = read_results(d)
    assert isinstance(info["metrics"], dict)


@bounded(30)
@given(data=st.binary(max_size=200) | st.just(b"SQLite format 3\x00").map(lambda b: b + bytes(200)))
def test_registry_database(scratch, data):
    from obliviate.runs import RunStore

    f = scratch() / "registry.sqlite"
    f.write_bytes(data)

    def read():
        with RunStore.open(f) as reg:
            return reg.runs()

    if holds(read) is None:
        assert f.read_bytes() == data  # a registry that cannot be read is left as it was


# --- checkpoint state: the resume reader ------------------------------------------------------------------------

STATE = objects(
    {
        "step": st.integers(-2, 10),
        "history": st.lists(st.dictionaries(st.sampled_from(["step", "loss"]), NUMBER), max_size=3),
        "meta": st.dictionaries(st.sampled_from(["inputs", "method", "options", "train"]), json_values()),
        "files": st.dictionaries(
            st.sampled_from(["params.safetensors", "optimizer.safetensors"]),
            st.integers(-1, 10**6) | SCALARS,
            max_size=2,
        ),
    },
    ("step", "history", "meta", "files"),
    required=("step", "history", "meta"),
)


@bounded(60)
@given(state=file_bytes(json_text(STATE, many=False)), params=safetensors_bytes(), optimizer=safetensors_bytes())
def test_checkpoint_state(scratch, state, params, optimizer):
    import torch

    from obliviate.core import checkpoint

    ckpt = scratch() / "checkpoint"
    ckpt.mkdir()
    (ckpt / "state.json").write_bytes(state)
    for name, data in zip(checkpoint.TENSOR_FILES, (params, optimizer)):
        if data is not None:
            (ckpt / name).write_bytes(data)
    read = holds(checkpoint.read_state, ckpt)
    if read is not None:
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.AdamW(model.parameters())
        holds(checkpoint.load_tensors, ckpt, read, model, opt)


# --- model directories: models/load.py ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory, tiny_tokenizer):
    """An untrained tiny model, saved: what is damaged below."""
    from obliviate.models.load import save_model
    from tests.conftest import tiny_model

    d = tmp_path_factory.mktemp("small-model")
    save_model(tiny_model(tiny_tokenizer), tiny_tokenizer, d)
    return d


CONFIG_KEYS = (
    "hidden_size",
    "num_attention_heads",
    "num_hidden_layers",
    "vocab_size",
    "intermediate_size",
    "model_type",
    "architectures",
    "torch_dtype",
    "num_key_value_heads",
    "rope_theta",
)


@bounded(16)
@given(data=st.data())
def test_model_dirs(scratch, small_model_dir, data):
    from obliviate.models.load import load_model

    d = scratch() / "model"
    shutil.copytree(small_model_dir, d)
    part = data.draw(st.sampled_from(["weights", "tokenizer", "config"]), "part")
    if part == "weights":
        w = d / "model.safetensors"
        raw = w.read_bytes()
        how = data.draw(st.sampled_from(["truncate", "header", "replace"]), "how")
        if how == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw) - 1), "at")]
        elif how == "header":
            raw = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1), "n")) + raw[8:]
        else:
            i = data.draw(st.integers(8, 8 + struct.unpack("<Q", raw[:8])[0] - 1), "at")
            raw = raw[:i] + bytes([data.draw(st.integers(0, 255), "b")]) + raw[i + 1 :]
        w.write_bytes(raw)
    else:
        f = d / ("tokenizer.json" if part == "tokenizer" else "config.json")
        doc = json.loads(f.read_text())
        keys = list(doc) if part == "tokenizer" else list(CONFIG_KEYS)
        for _ in range(data.draw(st.integers(1, 2), "edits")):
            key = data.draw(st.sampled_from(keys), "key")
            if data.draw(st.booleans(), "drop"):
                doc.pop(key, None)
            else:
                doc[key] = data.draw(SCALARS | st.integers(1, 96) | json_values(), "value")
        f.write_bytes(data.draw(mutated(st.just(dumps(doc))), "bytes"))
    holds(load_model, str(d), require_chat_template=False)
