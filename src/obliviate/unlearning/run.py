"""One unlearning run: forget and retain data in, an unlearned model directory out."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from obliviate.core import checkpoint
from obliviate.core.errors import UsageError
from obliviate.core.jsonio import write_json
from obliviate.core.outputs import check_output, is_main_process, output_dir
from obliviate.data.pools import IDK_POOL
from obliviate.data.schema import QAItem, load_lines, load_qa

if TYPE_CHECKING:
    from obliviate.engine.train import TrainResult


def qa_pairs(items: list[QAItem]) -> list[tuple[str, str]]:
    return [(it.question, it.answer) for it in items]


def idk_pool(path: str | Path | None) -> list[str]:
    return load_lines(path or IDK_POOL)


def unlearning_parts(forget: list[QAItem], retain: list[QAItem], idk: list[str], seed: int) -> dict:
    from obliviate.engine.train import idk_answers

    parts = {"forget": qa_pairs(forget), "retain": qa_pairs(retain)}
    if idk:
        parts["forget_idk"] = [(it.question, a) for it, a in zip(forget, idk_answers(forget, idk, seed))]
    if forget and all(it.alternate_answers for it in forget):
        rng = random.Random(seed + 1)  # one fixed alternate per item, so reference log-probs are stable
        parts["forget_alt"] = [(it.question, rng.choice(it.alternate_answers)) for it in forget]
    return parts


def check_resumable(out: str | Path, resume: bool) -> None:
    """Refuse to resume a run that finished (OUT/train_log.json is written last): there is nothing to continue."""
    if resume and (Path(out) / "train_log.json").is_file():
        raise UsageError(f"{out} holds a finished run; nothing to resume")


def write_record(o: Path, name: str, record: dict, resume: bool) -> None:
    """OUT/NAME (unlearn.json, align.json) before training. A resume keeps the one there: training rewrites it
    (`save_trained`) once it has checked the checkpoint's inputs."""
    if not (resume and (o / name).is_file()):
        write_json(o / name, record)


def save_trained(o: Path, model, tok, name: str, record: dict, train_log: dict, utility=None, seed: int = 0) -> None:
    """The tail of every model-writing run (`unlearn`, `align`): rewrite OUT/NAME, save the model, write
    OUT/train_log.json (which marks the run finished), then remove OUT/checkpoint/. With `utility` (a
    `UtilitySpec`), lm-eval's figures of the trained model go in train_log.json["utility"] first."""
    from obliviate.engine.utility import run_utility
    from obliviate.models.load import save_model

    if utility is not None:
        found = run_utility(model, tok, utility, str(o), seed)
        train_log = train_log | {"utility": found | {"config": utility.config()}}
    write_json(o / name, record)
    save_model(model, tok, o)
    write_json(o / "train_log.json", train_log)
    checkpoint.remove(o)


def run_unlearn(
    model: str,
    forget: Path,
    retain: Path,
    method: str,
    out: Path,
    *,
    options: dict | None = None,
    resume: bool = False,
    seed: int = 0,
    idk: Path | None = None,
    forget_batch_size: int = 32,
    retain_batch_size: int = 32,
    checkpoint_every: int = 25,
    lora_r: int = 0,
    progress: bool = True,
    text: bool = False,
    bf16: bool = False,
    gradient_checkpointing: bool = False,
    max_batch_tokens: int | None = None,
    prompt_format=None,
    utility=None,
    stop_on_collapse: bool = False,
    collapse_every: int = 10,
) -> TrainResult:
    """Unlearn `forget` from `model` while keeping `retain`, with one registered method: what `obliviate unlearn`
    runs, and `obliviate.unlearn` in Python.

    Args:
        model: an HF model directory (or hub id when online) with a chat template, unless `prompt_format` or
            `text` says how items are written.
        forget, retain: question-answer files (JSONL, TOFU .json, ...); with `text=True`, raw documents (MUSE).
        method: a registered method (`obliviate ls methods`); `options` its options as strings or values,
            e.g. {"steps": 40, "lr": 1e-4}.
        out: the new model directory (refused if it holds anything else, or is an input).
        resume: continue from OUT/checkpoint/ (refused when OUT already holds a finished run).
        idk: an "I don't know" answer pool, one per line (default: the shipped pool), for the methods that need it.
        forget_batch_size, retain_batch_size, checkpoint_every, lora_r, bf16, gradient_checkpointing: training
            (`obliviate.engine.train.TrainConfig`); `max_batch_tokens` None is the default budget where the
            method's loss splits (`train.batch_token_budget`), 0 whole batches.
        prompt_format: how items are written for a model without a chat template
            (`obliviate.models.prompt_format.prompt_format`); None: chat templates only.
        utility: an `obliviate.engine.utility.UtilitySpec` (`--utility lm-eval:TASKS`): lm-eval's figures of the
            unlearned model in train_log.json["utility"] (values, stderr, n, config).
        stop_on_collapse: every `collapse_every` steps, answer 8 forget questions and stop training when their
            fluency falls below the collapse floor (`obliviate.engine.collapse.CollapseMonitor`); the model is
            saved as it stands then, and train_log.json gets "stopped" (the reason) and "collapse_checks".

    Every input is checked before the model loads. Writes OUT: the HF model (safetensors, tokenizer),
    unlearn.json (the run's inputs and options) and train_log.json (steps, seconds, loss history).
    Returns the `TrainResult` (steps, seconds, history, processes)."""
    from obliviate.engine.train import TrainConfig, batch_token_budget, train
    from obliviate.models.load import load_model
    from obliviate.unlearning.methods import METHODS

    cls = METHODS.get(method)  # unknown name: did-you-mean, before any file is touched
    meth = cls.from_options(options or {})
    cfg = TrainConfig(
        forget_batch_size=forget_batch_size,
        retain_batch_size=retain_batch_size,
        seed=seed,
        checkpoint_every=checkpoint_every,
        lora_r=lora_r,
        progress=progress,
        bf16=bf16,
        gradient_checkpointing=gradient_checkpointing,
        max_batch_tokens=batch_token_budget(meth, max_batch_tokens),
    )
    pool = idk_pool(idk) if "forget_idk" in meth.needs else []
    if text:  # raw documents: plain language modelling on each (MUSE's raw splits)
        from obliviate.data.schema import load_texts

        f_texts, r_texts = load_texts(forget), load_texts(retain)
        rng = random.Random(seed)
        parts = {"forget": [(None, t) for t in f_texts], "retain": [(None, t) for t in r_texts]}
        if pool:
            parts["forget_idk"] = [(None, rng.choice(pool)) for _ in f_texts]
    else:
        parts = unlearning_parts(load_qa(forget), load_qa(retain), pool, seed)
    monitor = None
    if stop_on_collapse:
        from obliviate.engine.collapse import CollapseMonitor

        monitor = CollapseMonitor([q for q, _ in parts["forget"]], every=collapse_every)
    inputs = (model, forget, retain, idk)
    check_output(out, "unlearn", inputs=inputs, resume=resume)
    check_resumable(out, resume)
    from obliviate.engine.utility import check_utility

    utility = check_utility(utility)  # an unknown task or a missing dataset fails before training
    net, tok = load_model(model, require_chat_template=not text, prompt_format=None if text else prompt_format)
    with output_dir(out, "unlearn", inputs=inputs, resume=resume) as o:
        main = is_main_process()
        record = {
            "model": str(model),
            "forget": str(forget),
            "retain": str(retain),
            "method": method,
            "options": meth.__dict__,
            "seed": seed,
            **(prompt_format.config() if prompt_format and not text else {}),
        }
        if main:
            write_record(o, "unlearn.json", record, resume)
        stop = (lambda step, m: monitor(step, m, tok)) if monitor else None
        net, res = train(net, tok, meth, parts, cfg, out=o, resume=resume, stop_when=stop)
        log = {"steps": res.steps, "seconds": res.seconds, "processes": res.processes, "history": res.history}
        if monitor:
            log |= {"stopped": res.stopped, "collapse_checks": monitor.checks}
            if main and res.stopped:
                print(f"stopped on collapse: {res.stopped}", file=sys.stderr)
        if main:
            save_trained(
                o,
                net,
                tok,
                "unlearn.json",
                record,
                log,
                utility,
                seed,
            )
    return res
