"""Load any HF causal LM (directory, or hub id when online) plus its tokenizer; optional LoRA via peft."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from obliviate.core.errors import UsageError

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def canonical_dtype(name: str) -> str:
    """ "bf16" -> "bfloat16", ...; an unknown name is a UsageError (exit 2) that lists the known ones."""
    if name not in _DTYPES:
        raise UsageError(f"unknown dtype {name!r} (known: {', '.join(sorted(_DTYPES))})")
    return _DTYPES[name]


def default_dtype() -> str:
    """The dtype models are loaded in when a caller does not say: `--dtype` on the command line (which sets
    OBLIVIATE_DTYPE), else float32."""
    return canonical_dtype(os.environ.get("OBLIVIATE_DTYPE", "float32"))


def check_model_dir(path: str, *, local_only: bool = False) -> None:
    """A path that is (or looks like) a local directory must hold config.json, else UsageError (exit 2).

    Anything else is taken for a hub id; `local_only` treats every path as local."""
    p = Path(path)
    path = str(path)
    looks_local = local_only or p.exists() or path.startswith((".", "/", "~")) or path.count("/") > 1
    if looks_local and not (p / "config.json").is_file():
        raise UsageError(f"not a model directory (no config.json): {path}")


def _auto_class(path: str, trust_remote_code: bool):
    """AutoModelForCausalLM, or, for a vision-language chat model that has no causal-LM class (Qwen2.5-VL,
    Mistral 3, ...), AutoModelForImageTextToText: obliviate feeds it text only, and it saves back whole."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if type(cfg) not in MODEL_FOR_CAUSAL_LM_MAPPING and type(cfg) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def dtype_entry() -> dict:
    """{"dtype": ...} when `--dtype` set a load dtype other than float32, else {}: what results' configurations
    and the run registry's hashes add, so that float32 runs keep the hashes they had before the flag existed."""
    dtype = default_dtype()
    return {} if dtype == "float32" else {"dtype": dtype}


_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
)


def _part_files(path: str, part: str) -> str:
    """The files of a local model directory that `part` (config, tokenizer, weights) is read from."""
    d = Path(path)
    if not d.is_dir():
        return f"the {part}"
    if part == "config":
        return "config.json"
    if part == "tokenizer":
        names = [n for n in _TOKENIZER_FILES if (d / n).is_file()]
    else:
        names = sorted(f.name for f in d.glob("*.safetensors"))
        names = names if len(names) <= 2 else [names[0], f"... ({len(names)} weight files)"]
    return ", ".join(names) or f"the {part} files"


def _first_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0].strip()[:300]
    if isinstance(e, (OSError, ValueError)) and text:
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _shape_mismatch(path: str, auto) -> str | None:
    """For weights that do not fit config.json: "FILE does not fit config.json: KEY is [shape] in the file, [shape]
    by config.json" for the first tensor whose shape differs (read from the safetensors headers and from a model
    built on the meta device); None when that cannot be told."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig

    try:
        with torch.device("meta"):
            expected = {
                k: tuple(v.shape) for k, v in auto.from_config(AutoConfig.from_pretrained(path)).state_dict().items()
            }
        for f in sorted(Path(path).glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                for k in h.keys():
                    shape = tuple(h.get_slice(k).get_shape())
                    if k in expected and expected[k] != shape:
                        return (
                            f"{f.name} does not fit config.json: {k} is {list(shape)} in the file, "
                            f"{list(expected[k])} by config.json"
                        )
    except Exception:  # noqa: BLE001 - only a better message is lost
        return None
    return None


def _load_part(path: str, part: str, load, auto=None):
    """load(); any failure to read `part` of the model (config, tokenizer, weights) is a one-line UsageError that
    names the files, except running out of memory, which is no bad input."""
    import torch

    try:
        return load()
    except (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError), UsageError):
        raise
    except Exception as e:  # noqa: BLE001 - whatever the libraries raise on a malformed file (SafetensorError, ...)
        detail = _shape_mismatch(path, auto) if part == "weights" and auto is not None else None
        raise UsageError(
            f"cannot load model {path!r}: {detail or f'{_part_files(path, part)}: {_first_line(e)}'}"
        ) from None


def load_model(
    path: str,
    *,
    dtype: str | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    require_chat_template: bool = True,
    prompt_format=None,
):
    """Return (model, tokenizer). A local path that is not a model directory is a UsageError (exit 2). `dtype`:
    float32, bfloat16 or float16; None takes `default_dtype()` (the command line's `--dtype`, else float32).
    `prompt_format` (`models.prompt_format.PromptFormat`): how question-answer items are written for this model,
    its chat template or a plain template; without one, `require_chat_template` refuses a model that has none. Guards are attached above this layer
    (`obliviate.guards.base.attach_guards`)."""
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard bars drown our own progress output
    hf_logging.set_verbosity_error()
    check_model_dir(path)
    dtype = default_dtype() if dtype is None else canonical_dtype(dtype)
    # each part of a model directory is read on its own, so that a failure names the file it comes from
    auto = _load_part(path, "config", lambda: _auto_class(path, trust_remote_code))
    tok = _load_part(
        path, "tokenizer", lambda: AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    )
    model = _load_part(
        path,
        "weights",
        lambda: auto.from_pretrained(
            path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, use_safetensors=True
        ),
        auto,
    )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise UsageError(f"tokenizer of {path!r} has no eos token; cannot mark the end of answers")
    if prompt_format is not None:
        prompt_format.apply(tok, path)
    elif require_chat_template and getattr(tok, "chat_template", None) is None:
        raise UsageError(f"tokenizer of {path!r} has no chat template; obliviate formats QA as chat turns")
    return model.to(device), tok


LORA_ALPHA = 16


def add_lora(model, r: int = 8, alpha: int = LORA_ALPHA, dropout: float = 0.0, target_modules="all-linear"):
    """Wrap `model` with LoRA adapters (peft). `merge_lora` folds them back before saving.

    "all-linear" reaches every Linear but the head. A mixture of experts in transformers 5 keeps its experts as
    fused tensors [experts, ...], not Linear modules, so they get adapters through peft's `target_parameters`:
    without them LoRA would leave a MoE's experts, most of its MLP weights, untouched."""
    from peft import LoraConfig, get_peft_model

    from obliviate.models.anatomy import fused_expert_parameters

    experts = fused_expert_parameters(model) if target_modules == "all-linear" else []
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
        **({"target_parameters": experts} if experts else {}),
    )
    with warnings.catch_warnings():  # peft (0.21) reads transformers 5's deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, cfg)


def merge_lora(model):
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


STAGING = ".model.tmp"  # where save_model writes a model into a directory that already holds other files


def _sync_files(d: Path) -> None:
    for f in [*d.rglob("*"), d]:
        if f.is_file() or f.is_dir():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def save_model(model, tokenizer, out: str | Path) -> None:
    """Save an HF model directory (LoRA merged) so that no reader ever takes a half-written one for a model:
    config.json, which `check_model_dir` requires, appears last.

    - `out` absent or empty: written into a temporary sibling directory, renamed to `out` at the end;
    - `out` holding other files (a run's output: its marker, unlearn.json, checkpoints): written into
      `out/.model.tmp/`, then each file renamed into `out`, config.json last (an earlier config.json goes first).

    A failure removes the temporary directory; a kill leaves it, and the next save into `out` replaces it."""
    import shutil
    import tempfile

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(out)
    whole = not out.exists() or (out.is_dir() and not any(out.iterdir()))
    if whole:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the renamed directory should look like any other
    else:
        tmp = out / STAGING
        if tmp.exists():  # an earlier save into `out` that was killed
            shutil.rmtree(tmp)
        tmp.mkdir()
    try:
        merge_lora(model).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _sync_files(tmp)
        if whole:
            os.replace(tmp, out)  # onto an empty directory: allowed
            return
        (out / "config.json").unlink(missing_ok=True)
        for f in sorted(tmp.iterdir(), key=lambda f: f.name == "config.json"):
            if f.is_dir() and (out / f.name).is_dir():
                shutil.rmtree(out / f.name)
            os.replace(f, out / f.name)
        tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _safetensors_whole(path: Path) -> bool:
    """Whether a safetensors file is as long as its header says (a write or copy cut short is not)."""
    import json

    try:
        with path.open("rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little")
            if len(head) < 8 or n > 100_000_000:
                return False
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size >= 8 + n + end
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError):
        return False


def model_dir_complete(path: str | Path) -> bool:
    """Whether `path` holds a whole saved model: config.json, safetensors weights each as long as its header says,
    and every shard its index names. How a resume tells a finished model from an interrupted save."""
    import json

    p = Path(path)
    if not (p / "config.json").is_file():
        return False
    weights = sorted(p.glob("*.safetensors"))
    index = p / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return False
        if not all(isinstance(s, str) and (p / s).is_file() for s in shards):
            return False
    return bool(weights) and all(_safetensors_whole(w) for w in weights)
