"""The text pools shipped with obliviate (package data): IDK answers, refusals, benign prompts."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent

# The answer pool for IdkNLL / IdkDPO when the user gives none (our own wording; TOFU's pool can be passed
# with --idk ../shared/data/tofu/idontknow.jsonl).
IDK_POOL = DATA / "idk_answers.txt"
REFUSAL_POOL = DATA / "refusals.txt"
BENIGN_POOL = DATA / "benign_prompts.txt"
