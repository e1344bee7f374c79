"""The QA item schema (TOFU's fields plus a few of ours) and strict JSONL reading/writing.

A QA item is one JSON object per line:
    question            str
    answer              str         the ground-truth answer (trained on)
    paraphrased_answer  str         same fact, other wording (never trained on; truth ratio)
    perturbed_answer    list[str]   >= 1 plausible wrong answers in the paraphrase's wording
    alternate_answers   list[str]   optional: plausible alternative answers in the answer's wording (AltPO)
    id, subject, attribute, value   optional; `value` enables attribute-only accuracy
"""

from __future__ import annotations

import codecs
import io
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from obliviate.core.errors import UsageError


@dataclass
class QAItem:
    question: str
    answer: str
    paraphrased_answer: str = ""
    perturbed_answer: list[str] = field(default_factory=list)
    alternate_answers: list[str] = field(default_factory=list)
    id: str = ""
    subject: str = ""
    attribute: str = ""
    value: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


REQUIRED = ("question", "answer")
KNOWN = set(QAItem.__dataclass_fields__)


def _item_from(obj: object, where: str) -> QAItem:
    if not isinstance(obj, dict):
        raise UsageError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in REQUIRED:
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise UsageError(f"{where}: field {key!r} is missing or not a non-empty string")
    pert = obj.get("perturbed_answer", [])
    if isinstance(pert, str):  # TOFU files sometimes hold a single string
        pert = [pert]
    if not isinstance(pert, list) or not all(isinstance(p, str) for p in pert):
        raise UsageError(f"{where}: field 'perturbed_answer' must be a list of strings")
    alts = obj.get("alternate_answers", [])
    if not isinstance(alts, list) or not all(isinstance(a, str) for a in alts):
        raise UsageError(f"{where}: field 'alternate_answers' must be a list of strings")
    kwargs = {k: obj[k] for k in KNOWN if k in obj}
    kwargs["perturbed_answer"] = pert
    for k in ("paraphrased_answer", "id", "subject", "attribute", "value"):
        kwargs[k] = str(kwargs.get(k, "") or "")
    return QAItem(**kwargs)


def read_text(path: str | Path, what: str = "file") -> str:
    """A user file's text: UTF-8 (a leading byte-order mark is dropped). A missing or unreadable file, or a byte
    that is not UTF-8, is a UsageError naming the file (and the line of the bad byte); `what` names the format."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"file not found: {p}")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UsageError(f"{p}: unreadable {what}: {e.strerror or type(e).__name__}") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UsageError(f"{p}:{line}: not a UTF-8 {what} (byte 0x{data[e.start]:02x}; save it as UTF-8)") from None


def parse_json(text: str, where: str | Path, lineno: int | None = None) -> object:
    """One JSON document; malformed JSON, nesting too deep for Python, or an integer too long to convert is a
    UsageError naming `where` (the file) and the line: `lineno` for one line of a JSONL file, else the error's."""
    at = f"{where}:{lineno}" if lineno is not None else str(where)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{where}:{e.lineno if lineno is None else lineno}: malformed JSON ({e.msg})") from None
    except RecursionError:
        raise UsageError(
            f"{at}: JSON nested too deeply (Python reads about {sys.getrecursionlimit() - 50} levels at most)"
        ) from None
    except ValueError as e:  # an integer of more than sys.get_int_max_str_digits() digits
        raise UsageError(f"{at}: unreadable JSON number ({str(e).split(';')[0]})") from None


def read_jsonl(path: str | Path) -> list[tuple[int, object]]:
    """Read a JSONL file into (line number, object) pairs; a malformed line names the file and the line."""
    p = Path(path)
    return _jsonl(read_text(p, "JSONL file"), p)


def _jsonl(text: str, p: Path) -> list[tuple[int, object]]:
    # lines end at \n, \r\n or \r, as a text-mode file's do (str.splitlines would also split at \x1c, \u2028, ...)
    return [(n, parse_json(line, p, n)) for n, line in enumerate(io.StringIO(text, newline=None), 1) if line.strip()]


def read_json(path: str | Path) -> object:
    """One JSON document; a parse error names the file and the line."""
    p = Path(path)
    return parse_json(read_text(p, "JSON file"), p)


def read_records(path: str | Path) -> list[tuple[str, object]]:
    """Records of a JSON-list or JSONL file (told apart by the first character), each with where it stands:
    ("file:line", obj) for JSONL, ("file: item i", obj) for a list; Parquet / Arrow / Feather files and HF dataset
    ids (a missing path like OWNER/NAME[:CONFIG[:SPLIT]]) give ("file: row i", dict), see `tables`."""
    from obliviate.data import tables

    p = Path(path)
    if tables.table_format(p) or (not p.is_file() and tables.looks_like_hub_id(path)):
        return tables.read_table_records(path)
    text = read_text(p, "JSON/JSONL file")
    if text.lstrip().startswith("["):
        data = parse_json(text, p)
        if not isinstance(data, list):  # e.g. "[1] [2]" is not one list
            raise UsageError(f"{p}: expected a JSON list of records")
        return [(f"{p}: item {i}", o) for i, o in enumerate(data)]
    return [(f"{p}:{n}", o) for n, o in _jsonl(text, p)]


def load_qa(path: str | Path, *, allow_empty: bool = False, paraphrase_from_answer: bool = False) -> list[QAItem]:
    """Load a QA split from JSONL (one item per line; TOFU's `.json` files are JSONL too) or a JSON list.

    `paraphrase_from_answer`: items without a paraphrased answer use the answer itself, as TOFU does for its
    real-authors and world-facts files.
    """
    p = Path(path)
    items = [_item_from(obj, where) for where, obj in read_records(p)]
    if not items and not allow_empty:
        raise UsageError(f"{p}: the split is empty")
    if paraphrase_from_answer:
        for it in items:
            it.paraphrased_answer = it.paraphrased_answer or it.answer
    return items


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Deterministic JSONL (sorted keys, '\\n' line ends), written to a temporary file and renamed, so a reader
    or an interrupted run never sees half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
    tmp.replace(path)


def load_lines(path: str | Path) -> list[str]:
    """A text pool (one entry per line) or a JSONL of strings / {"text": ...} (TOFU's idontknow.jsonl is plain lines)."""
    p = Path(path)
    out = []
    for lineno, line in enumerate(io.StringIO(read_text(p, "text file"), newline=None), 1):
        s = line.strip()
        if not s:
            continue
        if s.startswith("{"):
            obj = parse_json(s, p, lineno)
            if not isinstance(obj, dict) or not isinstance(obj.get("text", ""), str):
                raise UsageError(f"{p}:{lineno}: expected a plain line or an object with a 'text' string")
            s = obj.get("text", "").strip()
            if not s:
                continue
        out.append(s)
    if not out:
        raise UsageError(f"{p}: the answer pool is empty")
    return out


def load_texts(path: str | Path) -> list[str]:
    """Raw documents: a `.txt` file is one document; JSON-list/JSONL records need a non-empty "text" field."""
    p = Path(path)
    if p.suffix == ".txt":
        texts = [read_text(p, "text file")]
    else:
        texts = []
        for where, obj in read_records(p):
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise UsageError(f"{where}: expected an object with a 'text' string")
            texts.append(obj["text"])
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise UsageError(f"{p}: the split is empty")
    return texts
