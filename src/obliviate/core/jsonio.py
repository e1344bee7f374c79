"""JSON files written whole: a temporary file then a rename, so a killed run leaves no half file."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file + rename): readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)
