"""What a run's output directory holds, read the same way by the live recording and by `runs rebuild`.

Metrics are the numeric leaves of the results files, named by their key path joined with "/":
- the `results` section ({run: {metric: value}}) of any file gives "RUN/metric";
- every other section of results.json gives its own path ("wall_seconds", "seconds/target");
- the other files are prefixed with their name: "audit/attacks/prefill/model/asr", "sweep/best/metrics/...",
  and a top-level key named like the file is not repeated ("leaderboard/forget10/npo/forget_quality/0").
Lists count as nodes indexed 0, 1, ...; lists longer than MAX_LIST (curves) are left to the report.
Metadata (config, versions, git, created, counts of samples, intervals...) and non-numeric values are not metrics.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional

from obliviate.core.outputs import (
    output_kind,
)

RESULT_FILES = ("results.json", "audit.json", "leaderboard.json", "calibration.json", "sweep.json")
# "intervals" (each figure's n and bounds) stays in the results file: six rows per figure would bury the figures
META_KEYS = {"config", "versions", "git", "created", "obliviate_version", "higher_is_better", "n_samples", "intervals"}
ARTIFACT_SUFFIXES = {".json", ".jsonl", ".png", ".html", ".md"}
MAX_LIST = 100
MAX_ARTIFACTS = 500
RUN_FILE = ".obliviate-run.json"  # the live record beside the results, so a rebuild restores it exactly
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt"}
# the data hash stays cheap: files over HASH_FILE_BYTES, and files past a HASH_TOTAL_BYTES reading budget, enter it by
# name and size only
HASH_FILE_BYTES = 32 * 2**20
HASH_TOTAL_BYTES = 256 * 2**20
# which command wrote a results file, when the run's own record is gone
COMMAND_OF_FILE = {
    "leaderboard.json": "bench",
    "sweep.json": "sweep",
    "calibration.json": "calibrate",
    "audit.json": "audit",
}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def iso_from_timestamp(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def canonical_hash(obj) -> str:
    """sha256 of canonical JSON (sorted keys, no spaces); paths and other objects by their str()."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_model_dir(p: Path) -> bool:
    """An HF / guard model directory: weights, not data; hashing it would cost seconds per GB."""
    try:
        return p.is_dir() and any(f.suffix in WEIGHT_SUFFIXES for f in p.iterdir())
    except OSError:
        return False


def data_hash(paths: Iterable) -> Optional[str]:
    """sha256 over the bytes of the given files and directories (recursively, sorted, with relative names);
    missing paths, model directories and weight files are skipped. None when nothing was hashed."""
    h = hashlib.sha256()
    seen, budget = False, HASH_TOTAL_BYTES
    for root in sorted({str(p) for p in paths}):
        base = Path(root)
        if not base.exists() or is_model_dir(base):
            continue
        files = (
            [base]
            if base.is_file()
            else sorted((Path(d) / f for d, _, fs in os.walk(base) for f in fs if f != RUN_FILE), key=str)
        )
        for f in files:
            if f.suffix in WEIGHT_SUFFIXES:
                continue
            try:
                size = f.stat().st_size
                h.update(f"{f.relative_to(base) if f != base else f.name}\0{size}\0".encode())
                if size <= min(HASH_FILE_BYTES, budget):
                    budget -= size
                    with open(f, "rb") as fh:
                        for block in iter(lambda: fh.read(2**20), b""):
                            h.update(block)
                seen = True
            except OSError:
                continue  # vanished or unreadable: a fingerprint, not a proof
    return h.hexdigest() if seen else None


def _leaves(node, prefix: str, out: dict) -> None:
    if isinstance(node, bool):  # JSON true/false are flags, not measurements
        return
    if isinstance(node, (int, float)):
        out[prefix] = None if isinstance(node, float) and math.isnan(node) else float(node)
    elif isinstance(node, dict):
        for k, v in node.items():
            _leaves(v, f"{prefix}/{k}" if prefix else str(k), out)
    elif isinstance(node, list) and len(node) <= MAX_LIST:
        for i, v in enumerate(node):
            _leaves(v, f"{prefix}/{i}" if prefix else str(i), out)


def metrics_of(doc: dict, file_name: str) -> dict[str, Optional[float]]:
    """The metric rows of one results document (see the module docstring for the names); NaN -> None."""
    out: dict = {}
    stem = file_name.rsplit(".", 1)[0]
    for key, value in doc.items():
        if key in META_KEYS:
            continue
        if key == "results":
            _leaves(value, "", out)
        elif file_name == "results.json":
            _leaves(value, key, out)
        else:
            _leaves(value, stem if key == stem else f"{stem}/{key}", out)
    return out


def read_doc(path: Path) -> Optional[dict]:
    """A results file as a dict; None when it is unreadable or not a JSON object (never raises)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # ValueError: also not UTF-8, or a 4300-digit number
        return None
    return doc if isinstance(doc, dict) else None


def artifacts_of(out: Path) -> list[tuple[str, str]]:
    """(kind, absolute path) of what a run left: model directories, JSON / JSONL / PNG / HTML / Markdown files."""
    out = Path(out)
    if out.is_file():
        return [(out.suffix.lstrip(".") or "file", str(out.resolve()))]
    if not out.is_dir():
        return []
    found: list[tuple[str, str]] = []
    if is_model_dir(out):
        found.append(("model", str(out.resolve())))
    for d, dirs, files in os.walk(out):
        dirs.sort()
        keep = []
        for name in dirs:
            sub = Path(d) / name
            if name.startswith(".") or name == "checkpoints":
                continue
            if is_model_dir(sub):  # list it, but not its shards
                found.append(("model", str(sub.resolve())))
            else:
                keep.append(name)
        dirs[:] = keep
        for name in sorted(files):
            if Path(name).suffix in ARTIFACT_SUFFIXES and not name.startswith("."):
                found.append((Path(name).suffix.lstrip("."), str((Path(d) / name).resolve())))
        if len(found) >= MAX_ARTIFACTS:
            break
    return found[:MAX_ARTIFACTS]


def read_results(out: Path) -> dict:
    """Everything the files of one output directory say about its run, for recording and for rebuilding:
    {"metrics", "artifacts", "files", "config", "config_hash", "created", "wall_seconds", "command",
    "suite", "method", "model"} (the last ones None when no file says)."""
    out = Path(out)
    info: dict = {
        "metrics": {},
        "artifacts": artifacts_of(out),
        "files": [],
        "config": None,
        "config_hash": None,
        "created": None,
        "wall_seconds": None,
        "command": None,
        "suite": None,
        "method": None,
        "model": None,
    }
    if not out.is_dir():
        return info
    for name in RESULT_FILES:
        path = out / name
        doc = read_doc(path) if path.is_file() else None
        if doc is None:
            continue
        info["files"].append(name)
        info["metrics"].update(metrics_of(doc, name))
        config = doc.get("config")
        if info["config"] is None and isinstance(config, dict):
            info["config"] = config
            info["config_hash"] = canonical_hash(config)
        if info["created"] is None:
            created = doc.get("created")
            info["created"] = created if isinstance(created, str) else iso_from_timestamp(path.stat().st_mtime)
        wall = doc.get("wall_seconds")
        if info["wall_seconds"] is None and isinstance(wall, (int, float)) and not isinstance(wall, bool):
            info["wall_seconds"] = float(wall)
        if info["command"] is None:
            info["command"] = COMMAND_OF_FILE.get(name)
        for key in ("suite", "method", "model"):
            source = config if isinstance(config, dict) else doc
            if info[key] is None and isinstance(source.get(key), str):
                info[key] = source[key]
    if isinstance(info["config"], dict) and isinstance(info["config"].get("command"), str):
        info["command"] = info["config"]["command"]
    if info["files"] and info["command"] is None:
        info["command"] = "demo" if (output_kind(out) or "").startswith("demo") else "eval"
    return info


def results_document(config: dict, results: dict, n_samples: dict, extra: dict | None = None) -> dict:
    """A results.json document: the schema of `obliviate.runs.schema.RESULTS_SCHEMA` (it changes only by addition);
    `extra` holds the optional sections a command adds (`seconds`, `wall_seconds`, `audit`, ...)."""
    import platform
    import subprocess
    from datetime import datetime, timezone

    from obliviate.core.version import __version__
    from obliviate.metrics import METRICS
    from obliviate.models.load import dtype_entry

    try:
        git = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
            ).stdout.strip()
            or None
        )
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
