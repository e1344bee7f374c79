"""The steps the CLI chains: build the tokenizer, fine-tune target/oracle, unlearn, evaluate, write results.

Each step takes paths and plain config objects and is usable from Python as well as from the CLI.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from obliviate import checkpoint
from obliviate.data.schema import QAItem, load_lines, load_qa
from obliviate.errors import UsageError
from obliviate.outputs import check_output, is_main_process, output_dir

# The answer pool for IdkNLL / IdkDPO when the user gives none (our own wording; TOFU's pool can be passed
# with --idk ../shared/data/tofu/idontknow.jsonl).
IDK_POOL = Path(__file__).parent / "data" / "idk_answers.txt"


def world_texts(world: Path) -> list[str]:
    """Every string of the world (train + holdout), so forget and holdout names tokenize alike (fair MIA)."""
    texts = []
    for name in ("train", "holdout"):
        for it in load_qa(world / f"{name}.jsonl"):
            texts.append(" ".join([it.question, it.answer, it.paraphrased_answer, *it.perturbed_answer]))
    return texts


def eval_data(data: Path, forget_split: str = "forget10", suite: str = "world") -> dict[str, list[QAItem]]:
    """The evaluation splits of a data directory, as the suite names them (see `obliviate.suites`)."""
    from obliviate.suites import SUITES

    return SUITES.get(suite).eval_data(Path(data), forget_split)


def qa_pairs(items: list[QAItem]) -> list[tuple[str, str]]:
    return [(it.question, it.answer) for it in items]


def idk_pool(path: str | Path | None) -> list[str]:
    return load_lines(path or IDK_POOL)


def unlearning_parts(forget: list[QAItem], retain: list[QAItem], idk: list[str], seed: int) -> dict:
    from obliviate.train import idk_answers

    parts = {"forget": qa_pairs(forget), "retain": qa_pairs(retain)}
    if idk:
        parts["forget_idk"] = [(it.question, a) for it, a in zip(forget, idk_answers(forget, idk, seed))]
    if forget and all(it.alternate_answers for it in forget):
        rng = random.Random(seed + 1)  # one fixed alternate per item, so reference log-probs are stable
        parts["forget_alt"] = [(it.question, rng.choice(it.alternate_answers)) for it in forget]
    return parts


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file + rename): readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def results_document(config: dict, results: dict, n_samples: dict, extra: dict | None = None) -> dict:
    """The results.json schema of DESIGN.md (additive changes only)."""
    import platform
    import subprocess
    from datetime import datetime, timezone

    from obliviate import __version__
    from obliviate.metrics import METRICS
    from obliviate.models.load import dtype_entry

    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        git = None
    versions = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "peft", "accelerate"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    metric_names = {k for r in results.values() for k in r}
    return {
        "obliviate_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {**config, **dtype_entry()},  # dtype: only when --dtype loaded models below float32
        "git": git,
        "versions": versions,
        "results": results,
        "higher_is_better": {m: METRICS.get(m).higher_is_better for m in sorted(metric_names) if m in METRICS},
        "n_samples": n_samples,
        **(extra or {}),
    }


class Timer:
    def __init__(self, started: float | None = None):
        self.t0 = time.perf_counter() if started is None else started

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def train_world_models(data: Path, out: Path, *, forget_split: str = "forget10", base: str | None = None,
                       steps: int = 300, lr: float = 3e-3, batch_size: int = 100, seed: int = 0,
                       only: str | None = None, tokenizer=None, prompt_format=None) -> dict[str, float]:
    """Fine-tune the target (train.jsonl) and the oracle (the matching retain split) from the same start.

    With `base` (an HF model directory or hub id) both start from it; otherwise from a tiny Llama built from
    config with a BPE tokenizer trained on the world's text. `prompt_format`: how items are written
    (`models.prompt_format.PromptFormat`; None: chat templates only). Returns seconds per model.
    """
    from obliviate.models.load import load_model, save_model
    from obliviate.models.tiny import build_model, build_tokenizer
    from obliviate.train import FineTune, TrainConfig, train

    from obliviate.suites import SUITES

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
        cfg = TrainConfig(retain_batch_size=batch_size, seed=seed, warmup_steps=min(20, steps // 10),
                          checkpoint_every=0)
        model, res = train(model, tokenizer, FineTune(lr=lr, steps=steps), {"retain": qa_pairs(items)}, cfg)
        save_model(model, tokenizer, out / name)
        seconds[name] = res.seconds
    return seconds


def run_unlearn(model: str, forget: Path, retain: Path, method: str, out: Path, *, options: dict | None = None,
                resume: bool = False, seed: int = 0, idk: Path | None = None, forget_batch_size: int = 32,
                retain_batch_size: int = 32, checkpoint_every: int = 25, lora_r: int = 0, progress: bool = True,
                text: bool = False, bf16: bool = False, gradient_checkpointing: bool = False,
                max_batch_tokens: int | None = 0, prompt_format=None):
    """Validate every input, then unlearn and save an HF model directory to `out`. Returns the TrainResult.
    `max_batch_tokens` None: the default budget where the method's loss splits (`train.batch_token_budget`)."""
    from obliviate.methods import METHODS
    from obliviate.models.load import load_model, save_model
    from obliviate.train import TrainConfig, batch_token_budget, train

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


def run_eval(runs: dict[str, str], data: Path, out: Path, *, oracle: str | None = None,
             forget_split: str = "forget10", suite: str = "world", guards: list[str] = (),
             prompt_format=None) -> dict:
    """Evaluate named model directories (and the oracle, first) and write results.json / samples.jsonl / report."""
    from obliviate.data.schema import write_jsonl
    from obliviate.evaluate import metrics_from_rows, sample_rows, score_model
    from obliviate.models.load import check_model_dir, load_model
    from obliviate.report.markdown import write_report

    splits = eval_data(Path(data), forget_split, suite)
    models = ({"oracle": oracle} if oracle else {}) | runs
    inputs = (*models.values(), data, *guards)
    check_output(out, "eval", inputs=inputs)
    for path in models.values():
        check_model_dir(path)
    with output_dir(out, "eval", inputs=inputs) as o:
        oracle_rows, results, samples = None, {}, []
        from rich.console import Console

        console = Console(stderr=True, log_path=False)
        for name, path in models.items():
            console.log(f"evaluating {name} ({path})")
            net, tok = load_model(path, guards=() if name == "oracle" else guards, prompt_format=prompt_format)
            rows = score_model(net, tok, splits)
            if name == "oracle":
                oracle_rows = rows
            results[name] = metrics_from_rows(rows, oracle_rows)
            samples += sample_rows(name, rows)
        doc = results_document({"data": str(data), "suite": suite, "forget_split": forget_split, "models": models,
                                "guards": list(guards), **(prompt_format.config() if prompt_format else {})},
                               results,
                               {s: len(v) for s, v in splits.items()})
        write_jsonl(o / "samples.jsonl", samples)
        write_json(o / "results.json", doc)
        write_report(o / "report.md", doc)
    return doc


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class Workers:
    """`map` over independent demo jobs (picklable functions of picklable jobs): in `n` spawned processes that
    share this process's threads when n > 1 (default: 2 where there are at least 2 cores and threads), else in
    this process. Results come back in the jobs' order; workers take jobs in that order, so put long ones first.
    Two single-thread processes beat one two-thread process on models too small to keep two threads busy: the 1M-
    parameter UNet's training step runs 0.37 s with 2 threads, 0.55 s with 1 thread in each of two processes side
    by side (1.35x the throughput, measured 2026-11-28)."""

    def __init__(self, n: int | None):
        import torch

        self.n = n if n is not None else (2 if (os.cpu_count() or 1) >= 2 and torch.get_num_threads() >= 2 else 1)
        self.pool = None

    def __enter__(self):
        if self.n > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            import torch

            threads = max(1, torch.get_num_threads() // self.n)
            self.pool = ProcessPoolExecutor(self.n, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker, initargs=(threads,))
        return self

    def map(self, fn, jobs):
        """Yields each job's result, in the jobs' order, as soon as it and those before it are done."""
        if self.pool:
            yield from self.pool.map(fn, jobs)
        else:
            for job in jobs:
                yield fn(job)

    def __exit__(self, *exc):
        if self.pool:
            self.pool.shutdown(cancel_futures=True)
