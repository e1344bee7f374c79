"""Suites: which files of a data directory a benchmark trains and evaluates on.

A suite maps a forget split name (e.g. "forget10") to the training files (forget / retain) and to the
evaluation splits. Evaluation split names are shared across suites, so metrics apply to all of them:

    forget        the items to forget (with paraphrased and perturbed answers)
    retain        retained items (utility)
    real_authors  TOFU only: knowledge from pre-training (utility; probability normalised over options)
    world_facts   general facts (utility; probability normalised over options)
    holdout       never-trained items of the forget distribution (membership inference); optional in TOFU
    recovery      world with misinformation only: the true answers of the facts the forget split falsifies
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from obliviate.core.errors import UsageError
from obliviate.core.registry import Registry
from obliviate.data.schema import QAItem, load_qa


@dataclass(frozen=True)
class EvalFile:
    pattern: str  # "{forget}" and "{pct}" are filled in
    required: bool = True
    paraphrase_from_answer: bool = False  # TOFU's real-authors / world-facts files have no paraphrase


@dataclass(frozen=True)
class Suite:
    name: str
    forget_file: str
    retain_file: str
    eval_files: dict[str, EvalFile]
    description: str
    text: bool = False  # forget/retain are raw documents (plain language modelling), not QA pairs

    @staticmethod
    def _fill(pattern: str, forget_split: str) -> str:
        pct = forget_split.removeprefix("forget")
        if not pct.isdigit():
            raise UsageError(f"forget split must look like forget01/forget05/forget10, got {forget_split!r}")
        return pattern.format(forget=forget_split, pct=pct, keep=f"{100 - int(pct):02d}")

    @staticmethod
    def _existing(p: Path) -> Path:
        """The file a pattern names; a pattern without an extension, or whose file is missing, takes the first of
        .jsonl / .json / .txt / .parquet / .arrow with that stem that exists (else the name as given, or .jsonl)."""
        if p.suffix and p.is_file():
            return p
        return next(
            (p.with_suffix(e) for e in (".jsonl", ".json", ".txt", ".parquet", ".arrow") if p.with_suffix(e).is_file()),
            p if p.suffix else p.with_suffix(".jsonl"),
        )

    def train_paths(self, data: Path, forget_split: str) -> tuple[Path, Path]:
        data = resolve_data(data)
        return tuple(self._existing(data / self._fill(f, forget_split)) for f in (self.forget_file, self.retain_file))

    def eval_data(self, data: Path, forget_split: str) -> dict[str, list[QAItem]]:
        if not self.eval_files:
            raise UsageError(f"the {self.name} suite is evaluated with `obliviate {self.name}-eval`, not `eval`")
        data = resolve_data(data)
        out = {}
        for split, spec in self.eval_files.items():
            path = self._existing(data / self._fill(spec.pattern, forget_split))
            if not spec.required and not path.is_file():
                continue
            out[split] = load_qa(path, paraphrase_from_answer=spec.paraphrase_from_answer)
            if split != "holdout":
                bad = [
                    it.id or it.question for it in out[split] if not it.paraphrased_answer or not it.perturbed_answer
                ]
                if bad:
                    raise UsageError(f"{path}: item {bad[0]!r} lacks paraphrased_answer/perturbed_answer (truth ratio)")
        return out


def resolve_data(data: str | Path) -> Path:
    """A local directory, or a HF dataset id (e.g. locuslab/TOFU) fetched with huggingface_hub when online."""
    p = Path(data)
    if p.is_dir():
        return p
    s = str(data)
    if s.count("/") == 1 and not s.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(
                snapshot_download(
                    repo_id=s,
                    repo_type="dataset",
                    allow_patterns=["*.json", "*.jsonl", "*.txt", "**/*.json", "**/*.jsonl", "**/*.txt"],
                )
            )
        except Exception as e:  # offline, unknown id, no access: one line, exit 2
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UsageError(f"data directory not found and dataset {s!r} could not be fetched: {first}") from None
    raise UsageError(f"data directory not found: {p}")


SUITES: Registry[Suite] = Registry("suite")

SUITES.register("world")(
    Suite(
        name="world",
        forget_file="{forget}.jsonl",
        retain_file="retain{keep}.jsonl",
        eval_files={
            "forget": EvalFile("{forget}.jsonl"),
            "retain": EvalFile("retain_eval.jsonl"),
            "world_facts": EvalFile("world_facts.jsonl"),
            "holdout": EvalFile("holdout.jsonl"),
            # a world with --misinformation: the corrupted facts' true answers (RESTOR recovery, forget00 only)
            "recovery": EvalFile("{forget}_true.jsonl", required=False),
        },
        description="the built-in fictitious world (`obliviate world`)",
    )
)

SUITES.register("tofu")(
    Suite(
        name="tofu",
        forget_file="{forget}.json",
        retain_file="retain{keep}.json",
        eval_files={
            "forget": EvalFile("{forget}_perturbed.json"),
            "retain": EvalFile("retain_perturbed.json"),
            "real_authors": EvalFile("real_authors_perturbed.json", paraphrase_from_answer=True),
            "world_facts": EvalFile("world_facts_perturbed.json", paraphrase_from_answer=True),
            "holdout": EvalFile("holdout{pct}.json", required=False),
        },
        description="TOFU (Maini et al. 2024): a directory holding the files of locuslab/TOFU's data/",
    )
)

SUITES.register("muse")(
    Suite(
        name="muse",
        forget_file="raw/forget",
        retain_file="raw/retain1",
        eval_files={},
        description="MUSE-News / MUSE-Books (Shi et al. 2025): unlearn raw/forget keeping raw/retain1; "
        "evaluate with `obliviate muse-eval`",
        text=True,
    )
)


def eval_data(data: Path, forget_split: str = "forget10", suite: str = "world") -> dict[str, list[QAItem]]:
    """The evaluation splits of a data directory, as the suite names them (see `obliviate.benchmarks.layouts`)."""
    from obliviate.benchmarks.layouts import SUITES

    return SUITES.get(suite).eval_data(Path(data), forget_split)
