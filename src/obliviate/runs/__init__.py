"""The run registry: every command that writes results records its run in one SQLite database.

- `db`: where the database lives, opening it safely, the versioned schema (`MIGRATIONS`);
- `store`: `RunStore`, the reads and writes (one short transaction each);
- `results`: what an output directory holds (metrics, artifacts, hashes), shared by recording and rebuild, and
  `results_document`, the results.json every evaluating command writes;
- `schema`: that document's schema as code (`RESULTS_SCHEMA`, `validate_results`, `check_results`);
- `hook`: the CLI's one hook (`start` / `finish` around every command with `--out`);
- `maintenance`: `doctor` and `rebuild`.

Standard library only: importing it costs milliseconds, so the CLI can record every command.
"""

from obliviate.runs.db import registry_path, schema_version
from obliviate.runs.results import canonical_hash, data_hash, read_results
from obliviate.runs.schema import RESULTS_SCHEMA, check_results, validate_results
from obliviate.runs.store import RunStore

__all__ = [
    "RESULTS_SCHEMA",
    "RunStore",
    "canonical_hash",
    "check_results",
    "data_hash",
    "read_results",
    "registry_path",
    "schema_version",
    "validate_results",
]
