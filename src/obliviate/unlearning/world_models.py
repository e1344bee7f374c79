"""Train the built-in world's target and retain-only (oracle) models."""

from __future__ import annotations

from pathlib import Path

from obliviate.data.schema import load_qa
from obliviate.data.world import world_texts
from obliviate.unlearning.run import qa_pairs


def train_world_models(
    data: Path,
    out: Path,
    *,
    forget_split: str = "forget10",
    base: str | None = None,
    steps: int = 300,
    lr: float = 3e-3,
    batch_size: int = 100,
    seed: int = 0,
    only: str | None = None,
    tokenizer=None,
    prompt_format=None,
) -> dict[str, float]:
    """Fine-tune the target (train.jsonl) and the oracle (the matching retain split) from the same start.

    With `base` (an HF model directory or hub id) both start from it; otherwise from a tiny Llama built from
    config with a BPE tokenizer trained on the world's text. `prompt_format`: how items are written
    (`models.prompt_format.PromptFormat`; None: chat templates only). Returns seconds per model.
    """
    from obliviate.benchmarks.layouts import SUITES
    from obliviate.engine.train import FineTune, TrainConfig, train
    from obliviate.models.load import load_model, save_model
    from obliviate.models.tiny import build_model, build_tokenizer

    data = Path(data)
    _, retain_path = SUITES.get("world").train_paths(data, forget_split)
    splits = {"target": load_qa(data / "train.jsonl"), "oracle": load_qa(retain_path)}
    if base is None and tokenizer is None:
        tokenizer = build_tokenizer(world_texts(data))
    if base is None and prompt_format is not None:
        prompt_format.apply(tokenizer, "the tiny model")
    seconds = {}
    for name, items in splits.items():
        if only and name != only:
            continue
        if base is None:
            model = build_model(tokenizer, seed=seed)
        else:
            model, tokenizer = load_model(base, prompt_format=prompt_format)
        cfg = TrainConfig(
            retain_batch_size=batch_size, seed=seed, warmup_steps=min(20, steps // 10), checkpoint_every=0
        )
        model, res = train(model, tokenizer, FineTune(lr=lr, steps=steps), {"retain": qa_pairs(items)}, cfg)
        save_model(model, tokenizer, out / name)
        seconds[name] = res.seconds
    return seconds
