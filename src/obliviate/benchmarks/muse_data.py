"""Readers for MUSE-News / MUSE-Books (Shi et al. 2025) from a local directory, and C1-C3 on a real model.

Expected layout (the HF datasets `muse-bench/MUSE-News` / `MUSE-Books` exported per subset and split, or the
MUSE repository's `data/<corpus>/`); each file is a JSON list or JSONL, or `.txt` for raw text:

    raw/{forget,retain1,retain2,holdout}.{json,jsonl,txt}   {"text"}  (a .txt file is one document)
    verbmem/forget.{json,jsonl}                             {"prompt", "gt"}
    knowmem/{forget_qa,retain_qa}.{json,jsonl}              {"question", "answer"}
    knowmem/{forget_qa_icl,retain_qa_icl}.{json,jsonl}      optional in-context examples
    privleak/{forget,retain,holdout}.{json,jsonl}           {"text"}

KnowMem uses MUSE's own prompt: the in-context examples as "Question: q\\nAnswer: a\\n\\n" followed by
"Question: q\\nAnswer:", greedy, cut at the first blank line or "Question"; VerbMem continues each prompt
greedily for up to 128 tokens and compares it with `gt` (ROUGE-L F1, no stemming).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from obliviate.core.errors import UsageError

FIELDS = {"raw": ("text",), "verbmem": ("prompt", "gt"), "knowmem": ("question", "answer"), "privleak": ("text",)}


def _find(root: Path, subset: str, split: str) -> Path | None:
    for ext in (".jsonl", ".json", ".txt", ".parquet", ".arrow"):
        p = root / subset / f"{split}{ext}"
        if p.is_file():
            return p
    return None


def load_split(root: str | Path, subset: str, split: str, *, required: bool = True) -> list[dict] | None:
    from obliviate.data.schema import read_records

    root = Path(root)
    p = _find(root, subset, split)
    if p is None:
        if required:
            raise UsageError(f"MUSE file not found: {root / subset / split}.{{json,jsonl,txt}}")
        return None
    records = [(str(p), {"text": p.read_text(encoding="utf-8")})] if p.suffix == ".txt" else read_records(p)
    rows = []
    for where, r in records:
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in FIELDS[subset]):
            raise UsageError(f"{where}: needs string fields {', '.join(FIELDS[subset])}")
        rows.append(r)
    if not rows:
        raise UsageError(f"{p}: the split is empty")
    return rows


def knowmem_prompt(question: str, icl: list[dict] | None) -> str:
    demo = "".join(f"Question: {x['question']}\nAnswer: {x['answer']}\n\n" for x in (icl or []))
    return f"{demo}Question: {question}\nAnswer:"


def _cut(text: str) -> str:
    for stop in ("\n\n", "\nQuestion", "Question:"):
        text = text.split(stop)[0]
    return text.strip()


def evaluate_muse_dir(model, tok, root: str | Path, oracle_auc: float | None = None, limit: int | None = None) -> dict:
    """C1 VerbMem, C2 KnowMem (forget), C4 KnowMem (retain) and C3 PrivLeak (with the oracle's Min-K% AUC)."""
    from obliviate.benchmarks.muse import mink_auc, rouge_l_f1
    from obliviate.engine.generation import generate
    from obliviate.metrics.mia import privleak
    from obliviate.models.encode import text_ids

    root = Path(root)
    vm = load_split(root, "verbmem", "forget")[:limit]
    outs = generate(model, tok, [text_ids(tok, r["prompt"]) for r in vm], max_new_tokens=128, batch_size=8)
    result = {"verbmem_forget": statistics.fmean(rouge_l_f1(r["gt"], o) for r, o in zip(vm, outs))}
    for split in ("forget", "retain"):
        qa = load_split(root, "knowmem", f"{split}_qa")[:limit]
        icl = load_split(root, "knowmem", f"{split}_qa_icl", required=False)
        outs = generate(
            model, tok, [text_ids(tok, knowmem_prompt(x["question"], icl)) for x in qa], max_new_tokens=32, batch_size=8
        )
        result[f"knowmem_{split}"] = statistics.fmean(rouge_l_f1(x["answer"], _cut(o)) for x, o in zip(qa, outs))
    forget, holdout = load_split(root, "privleak", "forget")[:limit], load_split(root, "privleak", "holdout")[:limit]
    result["mink_auc"] = mink_auc(model, tok, forget, holdout)
    if oracle_auc is not None:
        leak = privleak(result["mink_auc"], oracle_auc)
        if leak is not None:
            result["privleak"] = leak
    return result
