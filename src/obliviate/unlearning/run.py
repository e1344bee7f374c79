"""One unlearning run: forget and retain data in, an unlearned model directory out."""

from __future__ import annotations

import random
from pathlib import Path

from obliviate.core import checkpoint
from obliviate.core.errors import UsageError
from obliviate.core.jsonio import write_json
from obliviate.core.outputs import check_output, is_main_process, output_dir
from obliviate.data.pools import IDK_POOL
from obliviate.data.schema import QAItem, load_lines, load_qa


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


def run_unlearn(model: str, forget: Path, retain: Path, method: str, out: Path, *, options: dict | None = None,
                resume: bool = False, seed: int = 0, idk: Path | None = None, forget_batch_size: int = 32,
                retain_batch_size: int = 32, checkpoint_every: int = 25, lora_r: int = 0, progress: bool = True,
                text: bool = False, bf16: bool = False, gradient_checkpointing: bool = False,
                max_batch_tokens: int | None = 0, prompt_format=None):
    """Validate every input, then unlearn and save an HF model directory to `out`. Returns the TrainResult.
    `max_batch_tokens` None: the default budget where the method's loss splits (`train.batch_token_budget`)."""
    from obliviate.engine.train import TrainConfig, batch_token_budget, train
    from obliviate.models.load import load_model, save_model
    from obliviate.unlearning.methods import METHODS

    cls = METHODS.get(method)  # unknown name: did-you-mean, before any file is touched
    meth = cls.from_options(options or {})
    cfg = TrainConfig(forget_batch_size=forget_batch_size, retain_batch_size=retain_batch_size, seed=seed,
                      checkpoint_every=checkpoint_every, lora_r=lora_r, progress=progress, bf16=bf16,
                      gradient_checkpointing=gradient_checkpointing,
                      max_batch_tokens=batch_token_budget(meth, max_batch_tokens))
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
    inputs = (model, forget, retain, idk)
    check_output(out, "unlearn", inputs=inputs, resume=resume)
    if resume and (Path(out) / "train_log.json").is_file():
        raise UsageError(f"{out} holds a finished run; nothing to resume")
    net, tok = load_model(model, require_chat_template=not text, prompt_format=None if text else prompt_format)
    with output_dir(out, "unlearn", inputs=inputs, resume=resume) as o:
        main = is_main_process()
        record = {"model": str(model), "forget": str(forget), "retain": str(retain), "method": method,
                  "options": meth.__dict__, "seed": seed,
                  **(prompt_format.config() if prompt_format and not text else {})}
        if main and not (resume and (o / "unlearn.json").is_file()):  # a resume rewrites it once train has
            write_json(o / "unlearn.json", record)                     # checked the checkpoint's inputs
        net, res = train(net, tok, meth, parts, cfg, out=o, resume=resume)
        if main:
            write_json(o / "unlearn.json", record)
            save_model(net, tok, o)
            write_json(o / "train_log.json", {"steps": res.steps, "seconds": res.seconds, "processes": res.processes,
                                              "history": res.history})
            checkpoint.remove(o)
    return res
