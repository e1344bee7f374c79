"""Load any HF causal LM (directory, or hub id when online) plus its tokenizer; optional LoRA via peft."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from obliviate.errors import UsageError

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


def canonical_dtype(name: str) -> str:
    """"bf16" -> "bfloat16", ...; an unknown name is a UsageError (exit 2) that lists the known ones."""
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
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING,
                                                        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING)

    cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if type(cfg) not in MODEL_FOR_CAUSAL_LM_MAPPING and type(cfg) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def dtype_entry() -> dict:
    """{"dtype": ...} when `--dtype` set a load dtype other than float32, else {}: what results' configurations
    and the run registry's hashes add, so that float32 runs keep the hashes they had before the flag existed."""
    dtype = default_dtype()
    return {} if dtype == "float32" else {"dtype": dtype}


def load_model(path: str, *, dtype: str | None = None, device: str = "cpu", trust_remote_code: bool = False,
               require_chat_template: bool = True, guards=()):
    """Return (model, tokenizer). A local path that is not a model directory is a UsageError (exit 2). `dtype`:
    float32, bfloat16 or float16; None takes `default_dtype()` (the command line's `--dtype`, else float32).
    `guards`: guard directories (`obliviate guard fit`) attached to the model, so that generation and the
    teacher-forced metrics apply them (`obliviate.guards.attach`)."""
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard bars drown our own progress output
    hf_logging.set_verbosity_error()
    check_model_dir(path)
    dtype = default_dtype() if dtype is None else canonical_dtype(dtype)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = _auto_class(path, trust_remote_code).from_pretrained(
            path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"cannot load model {path!r}: {first}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise UsageError(f"tokenizer of {path!r} has no eos token; cannot mark the end of answers")
    if require_chat_template and getattr(tok, "chat_template", None) is None:
        raise UsageError(f"tokenizer of {path!r} has no chat template; obliviate formats QA as chat turns")
    model = model.to(device)
    if guards:
        from obliviate.guards import attach, load_guard

        attach(model, [load_guard(g, model, tok) for g in guards])
    return model, tok


LORA_ALPHA = 16


def add_lora(model, r: int = 8, alpha: int = LORA_ALPHA, dropout: float = 0.0, target_modules="all-linear"):
    """Wrap `model` with LoRA adapters (peft). `merge_lora` folds them back before saving.

    "all-linear" reaches every Linear but the head. A mixture of experts in transformers 5 keeps its experts as
    fused tensors [experts, ...], not Linear modules, so they get adapters through peft's `target_parameters`:
    without them LoRA would leave a MoE's experts, most of its MLP weights, untouched."""
    from peft import LoraConfig, get_peft_model

    from obliviate.models.anatomy import fused_expert_parameters

    experts = fused_expert_parameters(model) if target_modules == "all-linear" else []
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                     task_type="CAUSAL_LM", **({"target_parameters": experts} if experts else {}))
    with warnings.catch_warnings():  # peft (0.21) reads transformers 5's deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, cfg)


def merge_lora(model):
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def save_model(model, tokenizer, out: str | Path) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    merge_lora(model).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
