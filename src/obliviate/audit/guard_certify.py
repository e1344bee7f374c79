"""`guard certify` as the command runs it: erase-and-check's certified accuracy on harmful prompts, its
false-positive rate on safe prompts and its time per prompt (`obliviate.guards.erase_check.certify`), for a fitted
erase_check guard directory, on held-out prompts read the way `guard fit` reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from obliviate.audit.inputs import load_inputs
from obliviate.core.errors import UsageError


def certify_guard(
    guard_dir: Path,
    *,
    data: Path | None = None,
    harmful: Sequence[str] = (),
    benign: Sequence[str] = (),
    limit: int | None = None,
    options: dict | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Figures of the erase_check guard in `guard_dir` (`obliviate.guards.erase_check.certify`).

    Args:
        data / harmful / benign: as for `fit_guard`: a world directory, or KIND:FILE prompt files; the prompts
            scored are the held-out half (`policy_test`, the same seeded split `guard fit` makes with `seed`), so
            files the guard was fitted on are not scored on their training rows.
        limit: at most this many prompts of each (source, kind), every n-th one.
        options: guard options to change for the measurement (mode, d, variant, ratio, insertions, max_checks,
            threshold); the safety filter stays the fitted one."""
    from obliviate.core.options import cast_options
    from obliviate.guards.base import load_guard
    from obliviate.guards.erase_check import EraseCheck, certify
    from obliviate.refusal.public_refusal import subsample_per_source

    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1, got {limit}")
    guard = load_guard(guard_dir)
    if not isinstance(guard, EraseCheck):
        raise UsageError(f"{guard_dir}: guard certify measures erase_check guards, not {guard.name}")
    fixed = {k for k in (options or {}) if k in ("erased_train", "C", "refusal")}
    if fixed:
        raise UsageError(f"--option {', '.join(sorted(fixed))}: fixed when the guard was fitted")
    guard = guard.with_options(**cast_options(EraseCheck, options or {}, "guard erase_check"))
    inputs, _, _ = load_inputs("refusal", data=data, harmful=list(harmful), benign=list(benign), seed=seed)
    rows = subsample_per_source([r | {"source": r.get("source")} for r in inputs["policy_test"]], limit)
    return certify(
        guard,
        [r["prompt"] for r in rows if r["kind"] == "harmful"],
        [r["prompt"] for r in rows if r["kind"] != "harmful"],
    )
