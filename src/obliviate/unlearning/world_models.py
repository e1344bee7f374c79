"""Train the built-in world's target and retain-only (oracle) models."""

from __future__ import annotations

from pathlib import Path

from obliviate.core.errors import UsageError
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
    only: str | tuple[str, ...] | None = None,
    tokenizer=None,
    prompt_format=None,
    oracles: int = 1,
    dp=None,
) -> dict[str, float]:
    """Fine-tune the target (train.jsonl) and the oracle (the matching retain split) from the same start.

    `oracles` K > 1 adds K - 1 oracles that differ only in their seed, OUT/oracle_seed{seed + j} for j = 1 .. K-1
    (`oracle_names`): the distribution that KLoM compares unlearned models with. `only`: one of those names (or a
    tuple of them) trains just that.

    With `base` (an HF model directory or hub id) both start from it; otherwise from a tiny Llama built from
    config with a BPE tokenizer trained on the world's text. `prompt_format`: how items are written
    (`models.prompt_format.PromptFormat`; None: chat templates only). `dp` (`unlearning.dp.DPConfig`) with a finite
    epsilon trains the target with DP-SGD and writes OUT/target/dp.json. Returns seconds per model.
    """
    from obliviate.benchmarks.layouts import SUITES
    from obliviate.engine.train import FineTune, TrainConfig, train
    from obliviate.models.load import load_model, save_model
    from obliviate.models.tiny import build_model, build_tokenizer

    data = Path(data)
    _, retain_path = SUITES.get("world").train_paths(data, forget_split)
    retain = load_qa(retain_path)
    names = oracle_names(seed, oracles)
    splits = {"target": load_qa(data / "train.jsonl")} | {name: retain for name in names}
    seeds = {"target": seed} | dict(zip(names, range(seed, seed + oracles)))
    only = (only,) if isinstance(only, str) else only
    if base is None and tokenizer is None:
        tokenizer = build_tokenizer(world_texts(data))
    if base is None and prompt_format is not None:
        prompt_format.apply(tokenizer, "the tiny model")
    seconds = {}
    for name, items in splits.items():
        if only and name not in only:
            continue
        if base is None:
            model = build_model(tokenizer, seed=seeds[name])
        else:
            model, tokenizer = load_model(base, prompt_format=prompt_format)
        cfg = TrainConfig(
            retain_batch_size=batch_size, seed=seeds[name], warmup_steps=min(20, steps // 10), checkpoint_every=0
        )
        if name == "target" and dp is not None and dp.private:  # DP-SGD (DP2Unlearning); the oracles stay exact
            from obliviate.unlearning.dp import dp_train, write_dp_record

            model, record = dp_train(
                model,
                tokenizer,
                qa_pairs(items),
                dp,
                steps=steps,
                lr=lr,
                batch_size=batch_size,
                seed=seed,
                warmup_steps=cfg.warmup_steps,
            )
            save_model(model, tokenizer, out / name)
            write_dp_record(out / name, record)
            seconds[name] = record["seconds"]
            continue
        model, res = train(model, tokenizer, FineTune(lr=lr, steps=steps), {"retain": qa_pairs(items)}, cfg)
        save_model(model, tokenizer, out / name)
        seconds[name] = res.seconds
    return seconds


def oracle_names(seed: int = 0, oracles: int = 1) -> list[str]:
    """The oracles' directory names under a `finetune` output: "oracle" (seed `seed`), then "oracle_seed{seed + j}"
    for j = 1 .. oracles - 1."""
    if oracles < 1:
        raise UsageError(f"--oracles must be >= 1, got {oracles}")
    return ["oracle", *(f"oracle_seed{seed + j}" for j in range(1, oracles))]
