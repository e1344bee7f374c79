"""The one training loop, for fine-tuning and unlearning alike.

- Batches follow the `{"forget": ..., "retain": ..., "forget_idk": ...}` contract (see `obliviate.unlearning.methods`).
- Which items form batch `s` is a pure function of (seed, s), so a resumed run sees exactly the batches an
  uninterrupted run would, with no sampler state to save.
- Every `checkpoint_every` steps the weights, the AdamW state and the step are written to
  `OUT/checkpoint/` (safetensors + JSON, no pickles), rotated so that a crash never leaves none
  (`obliviate.core.checkpoint`); `resume=True` continues from there, after checking that the checkpoint was made from
  the same model, data and settings.
- A NaN or inf loss raises `TrainingDiverged` before the step is applied and before anything is saved.
- It runs under `accelerate`: the same code runs on CPU, one GPU, or DDP when launched with
  `accelerate launch`.
"""

from __future__ import annotations

import random
import sys
import time
import zlib
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from obliviate.core import checkpoint
from obliviate.core.errors import TrainingDiverged, UsageError
from obliviate.data.schema import QAItem
from obliviate.engine.method import Method, nll_loss
from obliviate.engine.numerics import checkpointing, flush_denormal, lr_at
from obliviate.models.encode import IGNORE, budget_chunks, collate, encode_pair, logits_runs, sequence_logp


@dataclass
class TrainConfig:
    forget_batch_size: int = 32
    retain_batch_size: int = 32
    seed: int = 0
    checkpoint_every: int = 25  # 0 disables checkpoints
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_len: int = 512
    lora_r: int = 0  # > 0 trains LoRA adapters (peft) and merges them into the saved model
    # bf16 autocast of every forward pass (weights, optimiser state and gradients stay fp32). On a CPU with AMX a
    # SmolLM2-135M LoRA step runs 1.5x faster, on one without it slower (`bf16_pays`); off by default: fp32 is exact
    bf16: bool = False
    # recompute each decoder layer's forward during the backward pass instead of keeping its activations: a
    # SmolLM2 LoRA step [8 x 512 tokens] peaked at 5.9 GB RSS instead of 13.8 GB, in 1.44x the time ([16 x 100]:
    # 3.1 against 6.0 GB, 1.10x); for long sequences or a model that barely fits
    gradient_checkpointing: bool = False
    # > 0: split each part of a batch into consecutive micro-batches of at most this many padded tokens and
    # accumulate their gradients (one optimiser step, the same gradient up to float rounding); only for losses that
    # are sums of per-part means (`Method.splits`: fine-tuning, the refusal methods, NPO, SimNPO, ...). A batch of
    # 16 with one 512-token sequence pads all 16 to 512
    max_batch_tokens: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.forget_batch_size < 1 or self.retain_batch_size < 1:
            raise UsageError("batch sizes must be >= 1")
        if self.checkpoint_every < 0 or self.lora_r < 0 or self.warmup_steps < 0 or self.max_batch_tokens < 0:
            raise UsageError("checkpoint_every, lora_r, warmup_steps and max_batch_tokens must be >= 0")


def batch_token_budget(method: Method, requested: int | None, default: int = 2048) -> int:
    """TrainConfig.max_batch_tokens for `method`: `requested`, or when None `default` for a method whose loss
    splits (`Method.splits`) and 0 (whole batches) for the others. A budget asked of a method that cannot split,
    or a negative one, is a UsageError. 2048 tokens: a batch of 32 short pairs (~60 tokens) stays whole, while
    one of HarmBench's 512-token contextual prompts no longer pads 32 rows to 512 (measured in docs/benchmarks.md, "A real
    model": one `align refusal_sft` step on HarmBench val failed at 21 GB in whole batches, 8.2 GB at 2048)."""
    if requested is None:
        return default if method.splits else 0
    if requested < 0:
        raise UsageError(f"--max-batch-tokens must be >= 0, got {requested}")
    if requested and not method.splits:
        raise UsageError(
            f"{type(method).__name__}'s loss does not split into micro-batches: give "
            "--max-batch-tokens 0 (or leave it out), or --gradient-checkpointing to save memory"
        )
    return requested


@dataclass
class FineTune(Method):
    """Plain SFT on the `retain` part: how the target and the oracle learn the world. Not an unlearning method."""

    lr: float = 3e-3
    steps: int = 400
    needs: ClassVar[tuple[str, ...]] = ("retain",)
    splits: ClassVar[bool] = True

    def part_loss(self, model, name, part, ref_model=None):
        loss = nll_loss(*sequence_logp(model, part))
        return loss, {"nll": loss.item()}


@dataclass
class TrainResult:
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    processes: int = 1
    stopped: str | None = None  # why `stop_when` ended training early (steps then counts the steps run)


def idk_answers(items: list[QAItem], pool: list[str], seed: int) -> list[str]:
    """One fixed "I don't know" answer per forget item (a seeded choice), so reference log-probs are stable."""
    rng = random.Random(seed)
    return [rng.choice(pool) for _ in items]


def encode_parts(tokenizer, parts: dict[str, list[tuple]], max_len: int) -> dict[str, list]:
    """Encode (question, answer) pairs; items that are already (input_ids, labels) lists pass through."""
    return {
        name: [item if isinstance(item[0], list) else encode_pair(tokenizer, *item, max_len) for item in pairs]
        for name, pairs in parts.items()
    }


def batch_indices(n: int, batch_size: int, step: int, seed: int, salt: int) -> list[int]:
    """Items of batch `step`: consecutive slices of an endless stream of seeded epoch permutations."""
    out, pos = [], step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        perm = list(range(n))
        random.Random(seed * 1_000_003 + salt * 7919 + epoch).shuffle(perm)
        take = perm[offset : offset + batch_size - len(out)]
        out.extend(take)
        pos += len(take)
    return out


@torch.no_grad()
def reference_logps(
    model, encoded: list, pad_id: int, device, batch_size: int = 64, max_logits: int = 2**28
) -> torch.Tensor:
    """Summed answer log-probs [N] of every item under the (frozen) starting model, computed once, in runs of at
    most `batch_size` rows and `max_logits` logits (`logits_runs`: long documents would otherwise build
    [64, 511, V] logits at once)."""
    model.eval()
    out = []
    for run in logits_runs(model, list(range(len(encoded))), batch_size, lambda j: len(encoded[j][0]), max_logits):
        batch = {k: v.to(device) for k, v in collate([encoded[j] for j in run], pad_id).items()}
        out.append(sequence_logp(model, batch)[0].cpu())
    return torch.cat(out)


def _micro_batches(method, rows: dict[str, list[int]], encoded: dict, refs: dict, pad: int, device, max_tokens: int):
    """(part name or None, batch, share) triples of one step. max_tokens 0, or every part within it: the whole
    batch (name None, share 1). Else, for a method that `splits`, each part in consecutive runs of its items within
    max_tokens padded tokens, weighted by the run's share of the part's answer tokens ("token" means) or items
    ("item" means): the runs' weighted terms then sum to the part's term on the whole batch."""

    def part(name, idx):
        out = {k: v.to(device) for k, v in collate([encoded[name][i] for i in idx], pad).items()}
        if name in refs:
            out["ref_logp"] = refs[name][idx].to(device)
        out["index"] = torch.tensor(idx, dtype=torch.long)  # positions in encoded[name] (`Method.prepare_targets`)
        return out

    runs = (
        {
            name: list(budget_chunks(idx, max_tokens, length=lambda i: len(encoded[name][i][0])))
            for name, idx in rows.items()
        }
        if max_tokens
        else {}
    )
    if all(len(r) == 1 for r in runs.values()):  # nothing to split: the whole batch, the same arithmetic as without
        yield None, {name: part(name, idx) for name, idx in rows.items()}, 1.0
        return
    for name, idx in rows.items():
        by_token = method.part_mean(name) == "token"
        weight = {i: sum(y != IGNORE for y in encoded[name][i][1]) if by_token else 1 for i in idx}
        total = max(1, sum(weight.values()))
        for run in runs[name]:
            yield name, part(name, run), sum(weight[i] for i in run) / total


def _resume_point(out: Path, meta: dict, steps: int, main: bool) -> tuple[Path, dict] | None:
    """The checkpoint of `out` to continue from and its state, checked against this run's `meta`; None, said in
    one line on stderr, when `out` holds none (the run starts from step 0)."""
    ckpt = checkpoint.find(out)
    if ckpt is None:
        if main:
            unfinished = " (checkpoint.tmp is an interrupted save)" if (out / checkpoint.PARTIAL).exists() else ""
            print(f"resume: no complete checkpoint in {out}{unfinished}; starting from step 0", file=sys.stderr)
        return None
    state = checkpoint.read_state(ckpt)
    checkpoint.check_meta(ckpt, state["meta"], meta)
    checkpoint.check_files(ckpt, state)
    if state["step"] >= steps:
        raise UsageError(
            f"damaged checkpoint file {ckpt / 'state.json'}: step {state['step']} is not below the "
            f"run's {steps} steps; delete {ckpt} to start again from step 0, or use a new --out"
        )
    return ckpt, state


def train(*args, **kwargs) -> tuple[object, "TrainResult"]:
    """See `_train`; runs it with denormals flushed to zero on CPU (`flush_denormal`)."""
    with flush_denormal():
        return _train(*args, **kwargs)


def _train(
    model,
    tokenizer,
    method: Method,
    parts: dict[str, list[tuple[str, str]]],
    cfg: TrainConfig,
    out: Path | None = None,
    resume: bool = False,
    on_step=None,
    model_id: str | None = None,
    stop_when=None,
) -> tuple[object, TrainResult]:
    """Train `model` with `method` on `parts` ({"forget": [(q, a)...], "retain": [...], "forget_idk": [...]}).

    Returns the trained model (LoRA merged) and a TrainResult. `on_step(step, model)` is called after each
    optimiser step (for curves). Checkpoints go to `out/checkpoint` when `out` is given; they record hashes of
    the model, the tokenizer and the data (`checkpoint.inputs_meta`), and `resume` refuses a checkpoint made from
    other ones. `model_id`: `checkpoint.model_hash` of the model as loaded, for a caller that changed it before
    training (added tokens initialise new embedding rows at random). `stop_when(step, model)`, after `on_step`:
    a reason (str) ends training after that step (`obliviate.engine.collapse.CollapseMonitor`), None goes on.
    """
    from accelerate import Accelerator

    missing = [p for p in method.needs if not parts.get(p)]
    if missing:
        hint = {
            "forget_alt": " (every forget item needs an `alternate_answers` list)",
            "forget_idk": " (an 'I don't know' answer pool, --idk)",
        }
        raise UsageError(
            f"{type(method).__name__} needs non-empty {', '.join(missing)} data"
            + "".join(hint.get(m, "") for m in missing)
        )
    low = sorted(
        {
            str(p.dtype).removeprefix("torch.")
            for p in model.parameters()
            if p.is_floating_point() and p.dtype != torch.float32
        }
    )
    if low and not cfg.lora_r:
        # AdamW on bf16/fp16 weights drops every update below the weight's precision (bf16: 1/256 relative)
        raise UsageError(
            f"full fine-tuning needs float32 weights, and the model was loaded in {low[0]} (--dtype): "
            "drop --dtype (--bf16 computes in bfloat16 over float32 weights) or train LoRA (--lora-r)"
        )
    if cfg.max_batch_tokens and not method.splits:
        raise UsageError(
            f"max_batch_tokens splits losses that are sums of per-part means (fine-tuning, refusal SFT, "
            f"DeRTa, ...); {type(method).__name__}'s loss does not split: drop it (--max-batch-tokens 0)"
        )
    if cfg.gradient_checkpointing and not getattr(model, "supports_gradient_checkpointing", False):
        raise UsageError(
            f"{type(model).__name__} does not support gradient checkpointing: drop --gradient-checkpointing"
        )
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    meta = {"method": type(method).__name__, "options": asdict(method), "train": asdict(cfg) | {"progress": None}}
    for same in ("gradient_checkpointing", "max_batch_tokens", "checkpoint_every"):  # the same run either way
        meta["train"].pop(same)
    saved = None  # (checkpoint directory, its state) to continue from
    if out is not None and (resume or cfg.checkpoint_every):
        meta["inputs"] = checkpoint.inputs_meta(model, tokenizer, parts, method.needs, model_id)
    if out is not None and resume:
        saved = _resume_point(Path(out), meta, method.steps, accelerator.is_main_process)
    device = accelerator.device
    pad = tokenizer.pad_token_id
    encoded = encode_parts(tokenizer, {p: parts[p] for p in method.needs}, cfg.max_len)
    model.to(device)

    # one precision for the reference statistics and the updated model: NPO's log-ratio is 0 at step 0 either way
    def amp():
        return torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()

    # Reference statistics are computed once, before any update (NPO, DPO...): no second model in memory.
    with amp():
        refs = {p: reference_logps(model, encoded[p], pad, device) for p in method.reference}
    method.prepare_targets(model, tokenizer, encoded, pad)
    ref_model = None
    if method.live_reference:  # only for losses that need full reference distributions (KL)
        import copy

        ref_model = copy.deepcopy(model).eval().requires_grad_(False)

    if getattr(method, "needs_lora", False) and not cfg.lora_r:
        raise UsageError(f"{type(method).__name__} with these options trains LoRA adapters: give --lora-r")
    method.begin(model)
    if cfg.gradient_checkpointing:
        # non-reentrant: gradients reach LoRA adapters behind frozen embeddings without enable_input_require_grads
        checkpointing(model, True)
    if cfg.lora_r:
        from obliviate.models.load import LORA_ALPHA, add_lora

        model = add_lora(model, r=cfg.lora_r)

        def batches(part: str, batch_size: int = 32):
            for i in range(0, len(encoded[part]), batch_size):
                yield {k: v.to(device) for k, v in collate(encoded[part][i : i + batch_size], pad).items()}

        with amp():
            method.after_lora(model, batches, LORA_ALPHA / cfg.lora_r)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=method.lr, weight_decay=cfg.weight_decay)
    start, history, done, stopped = 0, [], 0, None
    if saved:
        checkpoint.load_tensors(*saved, model, optimizer)
        start, history = saved[1]["step"], saved[1]["history"]
        if accelerator.is_main_process:
            print(f"resume: continuing from step {start} ({saved[0]})", file=sys.stderr)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    world, rank = accelerator.num_processes, accelerator.process_index
    t0 = time.perf_counter()
    progress = _progress(cfg.progress and accelerator.is_main_process, method.steps, start, type(method).__name__)
    for step in range(start, method.steps):
        rows = {}
        for name in method.needs:
            # forget and forget_idk share indices: the same questions, two answers (IdkDPO pairs them)
            salt = 1 if name.startswith("forget") else 2 if name == "retain" else zlib.crc32(name.encode())
            bs = cfg.forget_batch_size if salt == 1 else cfg.retain_batch_size
            rows[name] = batch_indices(len(encoded[name]), bs * world, step, cfg.seed, salt)[rank::world]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, method.lr, cfg.warmup_steps, method.steps)
        method.step, method.total_steps = step, method.steps  # for step-dependent schedules (e.g. l1 weight)
        optimizer.zero_grad(set_to_none=True)
        loss, logs = 0.0, {}
        for name, batch, share in _micro_batches(method, rows, encoded, refs, pad, device, cfg.max_batch_tokens):
            with amp():
                part_loss, part_logs = (
                    method.loss(model, batch, ref_model)
                    if name is None
                    else method.part_loss(model, name, batch, ref_model)
                )
            if part_loss is None:
                continue  # a part that does not count (zero weight): no forward pass was made
            part_loss = part_loss.float()
            if not torch.isfinite(part_loss):
                progress.stop()
                raise TrainingDiverged(
                    f"loss became {part_loss.item()} at step {step + 1}; stopped before saving. Try a lower --lr "
                    f"(now {method.lr})"
                )
            accelerator.backward(part_loss * share)
            loss = loss + part_loss.item() * share
            for k, v in part_logs.items():  # each part logs its own keys, averaged over its runs
                logs[k] = logs.get(k, 0.0) + v * share
        if cfg.max_grad_norm:
            accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
        optimizer.step()
        method.after_step(model, step + 1)
        history.append({"step": step + 1, "loss": round(loss, 6), **{k: round(v, 6) for k, v in logs.items()}})
        progress.advance(loss)
        if on_step:
            on_step(step + 1, accelerator.unwrap_model(model))
        done = step + 1
        stopped = stop_when(done, accelerator.unwrap_model(model)) if stop_when else None
        if stopped:
            break
        if out is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < method.steps:
            if accelerator.is_main_process:
                checkpoint.save(Path(out), accelerator.unwrap_model(model), optimizer, done, history, meta)
            accelerator.wait_for_everyone()
    progress.stop()
    model = accelerator.unwrap_model(model)
    if cfg.lora_r:
        from obliviate.models.load import merge_lora

        model = merge_lora(model)
    if cfg.gradient_checkpointing:
        checkpointing(model, False)
    model = method.finalize(model)
    model.eval()
    steps = done if stopped else method.steps
    return model, TrainResult(steps, time.perf_counter() - t0, history, processes=world, stopped=stopped)


class _progress:
    """A rich progress bar with the running loss; silent when disabled."""

    def __init__(self, enabled: bool, total: int, start: int, label: str):
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
                transient=True,
            )
            self.task = self.bar.add_task(label, total=total, completed=start, loss="-")
            self.bar.start()

    def advance(self, loss: float):
        if self.bar:
            self.bar.update(self.task, advance=1, loss=f"{loss:.4f}")

    def stop(self):
        if self.bar:
            self.bar.stop()
            self.bar = None
