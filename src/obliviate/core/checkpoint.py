"""Training checkpoints: `OUT/checkpoint/` holds the trained weights and the AdamW state (safetensors) and
`state.json` (the step, the loss history, and what the run was made from), so that `--resume` continues an
interrupted run. No pickles.

A save rotates, so that there is no moment without a complete checkpoint once the first save has finished:

1. write `checkpoint.tmp/`: the two tensor files, then `state.json` (with the tensor files' sizes), each synced;
2. rename `checkpoint/` to `checkpoint.prev/`;
3. rename `checkpoint.tmp/` to `checkpoint/`;
4. delete `checkpoint.prev/`.

Resume takes `checkpoint/`, else `checkpoint.prev/` (a crash between steps 2 and 3), and never `checkpoint.tmp/`.

`state.json` records what the run was made from (`run_meta`): the method and its options, the training settings,
a hash of the model's weights (a sample of every tensor), of the tokenizer and of each data part. A resume with
other inputs is a UsageError that names what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from obliviate.core.errors import UsageError

CURRENT, PREVIOUS, PARTIAL = "checkpoint", "checkpoint.prev", "checkpoint.tmp"
TENSOR_FILES = ("params.safetensors", "optimizer.safetensors")
SAMPLES = 4096  # values hashed per weight tensor


# --- what a run is made from -------------------------------------------------------------------------------


def model_hash(model, samples: int = SAMPLES) -> str:
    """A hash of every parameter's name, shape, dtype and `samples` evenly spaced values: exact (no arithmetic on
    the values), cheap for any size, and different for two fine-tunes of the same base (they differ everywhere)."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
            flat = p.detach().reshape(-1)
            n = flat.numel()
            if n and flat.device.type != "meta":
                k = min(n, samples)
                idx = torch.arange(k, dtype=torch.long) * (n - 1) // max(1, k - 1)
                h.update(flat[idx.to(flat.device)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def tokenizer_hash(tokenizer) -> str:
    """A hash of the vocabulary, the chat template and the special tokens' ids."""
    doc = [
        sorted(tokenizer.get_vocab().items()),
        getattr(tokenizer, "chat_template", None),
        [getattr(tokenizer, f"{t}_token_id", None) for t in ("bos", "eos", "pad", "unk")],
    ]
    return hashlib.sha256(json.dumps(doc, default=str).encode()).hexdigest()[:16]


def _jsonable(o):
    if hasattr(o, "tolist"):  # a tensor or an array of token ids
        return o.tolist()
    raise TypeError(f"cannot hash a {type(o).__name__} in training data")


def data_hash(items: list) -> str:
    return hashlib.sha256(json.dumps(items, default=_jsonable, ensure_ascii=False).encode()).hexdigest()[:16]


def inputs_meta(model, tokenizer, parts: dict[str, list], needs, model_id: str | None = None) -> dict:
    """The "inputs" entry of `run_meta`: hashes of the model (or `model_id`, a hash the caller took of the model as
    it was loaded, when it changed it since, e.g. by adding tokens), the tokenizer and each data part trained on."""
    return {
        "model": model_id or model_hash(model),
        "tokenizer": tokenizer_hash(tokenizer),
        "data": {name: data_hash(parts[name]) for name in needs},
    }


def differences(saved: dict, now: dict) -> list[str]:
    """What differs between the meta a checkpoint recorded and this run's: "model", "forget data", "method",
    "lr", "seed", ... (option and setting names as the method and TrainConfig call them)."""

    def sub(d, key):
        v = d.get(key) if isinstance(d, dict) else None
        return v if isinstance(v, dict) else {}

    diffs = []
    si, ni = sub(saved, "inputs"), sub(now, "inputs")
    diffs += [k for k in ("model", "tokenizer") if si.get(k) != ni.get(k)]
    sd, nd = sub(si, "data"), sub(ni, "data")
    diffs += [f"{p} data" for p in sorted(set(sd) | set(nd)) if sd.get(p) != nd.get(p)]
    if saved.get("method") != now.get("method"):
        diffs.append("method")
    else:
        so, no = sub(saved, "options"), sub(now, "options")
        diffs += [k for k in sorted(set(so) | set(no)) if so.get(k) != no.get(k)]
    st, nt = sub(saved, "train"), sub(now, "train")
    diffs += [k for k in sorted(set(st) | set(nt)) if st.get(k) != nt.get(k)]
    return diffs


# --- saving -------------------------------------------------------------------------------------------------


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(out: Path, model, optimizer, step: int, history: list, meta: dict) -> None:
    """Save the trainable weights and the optimizer state as `out/checkpoint`, rotating (module docstring)."""
    from safetensors.torch import save_file

    out = Path(out)
    tmp, cur, prev = out / PARTIAL, out / CURRENT, out / PREVIOUS
    if tmp.exists():  # an earlier save that was interrupted
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    params = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    save_file(params, str(tmp / TENSOR_FILES[0]))
    opt = {}
    for i, group in enumerate(optimizer.param_groups):
        for j, p in enumerate(group["params"]):
            for k, v in optimizer.state.get(p, {}).items():
                v = v.detach()
                opt[f"{i}.{j}.{k}"] = (v.reshape(-1) if v.dim() == 0 else v).contiguous().cpu()
    save_file(opt, str(tmp / TENSOR_FILES[1]))
    sizes = {f: (tmp / f).stat().st_size for f in TENSOR_FILES}
    (tmp / "state.json").write_text(
        json.dumps({"step": step, "history": history, "meta": meta, "files": sizes}, indent=1), encoding="utf-8"
    )
    for f in (*TENSOR_FILES, "state.json", ""):
        _sync(tmp / f)
    if cur.exists():
        if prev.exists():  # a crash after an earlier step 3: checkpoint/ is the newer, complete one
            shutil.rmtree(prev)
        os.replace(cur, prev)
    os.replace(tmp, cur)
    _sync(out)
    if prev.exists():
        shutil.rmtree(prev)


def remove(out: Path) -> None:
    """Delete every checkpoint of `out` (once the run has finished and saved its model)."""
    for name in (CURRENT, PREVIOUS, PARTIAL):
        shutil.rmtree(Path(out) / name, ignore_errors=True)


# --- resuming -----------------------------------------------------------------------------------------------


def find(out: Path) -> Path | None:
    """The checkpoint a resume continues from: `checkpoint/`, else `checkpoint.prev/`, else None."""
    for name in (CURRENT, PREVIOUS):
        if (Path(out) / name).is_dir():
            return Path(out) / name
    return None


def _damaged(path: Path, problem: str) -> UsageError:
    return UsageError(
        f"damaged checkpoint file {path}: {problem}; delete {path.parent} to start again from step 0, "
        "or use a new --out"
    )


def read_state(ckpt: Path) -> dict:
    """state.json of `ckpt`, checked: {"step": int >= 0, "history": [one dict per step], "meta": dict,
    "files": {name: size}}.
    Anything else is a UsageError naming the file."""
    path = Path(ckpt) / "state.json"
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise _damaged(path, "it is missing") from None
    except OSError as e:
        raise _damaged(path, e.strerror or type(e).__name__) from None
    except UnicodeDecodeError as e:
        raise _damaged(path, f"not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise _damaged(path, f"not valid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    except (ValueError, RecursionError) as e:
        raise _damaged(path, f"not valid JSON ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(state, dict):
        raise _damaged(path, f"expected an object, found {type(state).__name__}")
    step, history, meta, files = state.get("step"), state.get("history"), state.get("meta"), state.get("files", {})
    if type(step) is not int or step < 0:
        raise _damaged(path, f"'step' must be an integer >= 0, found {step!r:.40}")
    if (
        not isinstance(history, list)
        or len(history) != step
        or not all(
            isinstance(h, dict) and type(h.get("step")) is int and type(h.get("loss")) in (int, float) for h in history
        )
    ):
        raise _damaged(path, "'history' must hold one object with 'step' and 'loss' per step done")
    if not isinstance(meta, dict):
        raise _damaged(path, "'meta' must be an object")
    if not isinstance(files, dict) or not all(type(v) is int for v in files.values()):
        raise _damaged(path, "'files' must map file names to sizes")
    return state


def check_meta(ckpt: Path, saved: dict, meta: dict) -> None:
    """UsageError unless the checkpoint was made from the same inputs and settings as this run, naming what
    differs."""
    if "inputs" not in saved and "inputs" in meta:
        raise UsageError(
            f"cannot resume from {ckpt}: it records no hashes of its model and data (an older obliviate "
            "wrote it); use a new --out"
        )
    diffs = differences(saved, meta)
    if diffs:
        raise UsageError(
            f"cannot resume from {ckpt}: it was written with other settings ({', '.join(diffs)} "
            "differ); give the same ones, or use a new --out"
        )


def check_files(ckpt: Path, state: dict) -> None:
    """The tensor files are there and as long as state.json recorded (cheap: before a resume does any work)."""
    for name in TENSOR_FILES:
        path, size = Path(ckpt) / name, state.get("files", {}).get(name)
        if not path.is_file():
            raise _damaged(path, "it is missing")
        if size is not None and path.stat().st_size != size:
            raise _damaged(path, f"{path.stat().st_size} bytes, state.json recorded {size} (truncated?)")


def _load(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _damaged(path, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from None


def load_tensors(ckpt: Path, state: dict, model, optimizer) -> None:
    """Copy the checkpoint's weights into `model` and its AdamW state into `optimizer`; a file that is damaged or
    does not fit the model is a UsageError naming it."""
    import torch

    check_files(ckpt, state)
    path = Path(ckpt) / TENSOR_FILES[0]
    params = _load(path)
    named = dict(model.named_parameters())
    wrong = [n for n, t in params.items() if n not in named or named[n].shape != t.shape]
    if wrong:
        raise _damaged(path, f"tensor {wrong[0]!r} does not fit the model")
    lacking = [n for n, p in named.items() if p.requires_grad and n not in params]
    if lacking:
        raise _damaged(path, f"it lacks the trained tensor {lacking[0]!r}")
    path = Path(ckpt) / TENSOR_FILES[1]
    opt = _load(path)
    states: dict = {}
    for key, v in opt.items():
        i, j, name = (key.split(".", 2) + ["", ""])[:3]
        groups = optimizer.param_groups
        if not (
            (i + j).isascii()
            and i.isdigit()
            and j.isdigit()
            and name
            and int(i) < len(groups)
            and int(j) < len(groups[int(i)]["params"])
        ):
            raise _damaged(path, f"tensor {key!r} names no parameter of the optimizer")
        p = groups[int(i)]["params"][int(j)]
        if name == "step":
            v = v.reshape(())
        elif v.shape != p.shape:
            raise _damaged(path, f"tensor {key!r} does not fit the model")
        states.setdefault(p, {})[name] = v
    with torch.no_grad():
        for n, t in params.items():
            named[n].copy_(t)
    for p, st in states.items():
        optimizer.state[p] = st
