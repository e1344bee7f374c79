"""General capability next to every result: lm-evaluation-harness tasks run on the model in memory.

`--utility lm-eval:TASK[,TASK...]` runs lm-eval's Python API (`lm_eval.simple_evaluate`) on the model a command has
loaded or trained, wrapped as `lm_eval.models.huggingface.HFLM(pretrained=model, tokenizer=tok)`; nothing is
reloaded and nothing is written but the results. OpenUnlearning does the same next to its metrics
(`src/evals/lm_eval.py`, MMLU / GSM8K through `simple_evaluate`).

Offline: while the tasks load, `HF_HUB_OFFLINE` / `HF_DATASETS_OFFLINE` are on (and the `datasets` and
`huggingface_hub` flags read at import), so a task reads local data files (`dataset_path: json` with
`dataset_kwargs: data_files`) or the user's `datasets` cache; a dataset in neither is a UsageError naming it. Local
task YAMLs come from `--utility-tasks DIR` (lm-eval's `include_path`); a task name found nowhere is a UsageError
that suggests the closest known name.

Figures: `utility/<task>/<metric>` per run (a filter other than lm-eval's "none" is added as `<metric>[<filter>]`),
lm-eval's standard error of each in `stderr`, the examples scored in `n`, and, for a per-example metric, the
bootstrap interval over examples that obliviate gives every rate (`obliviate.metrics.intervals.mean_interval`).
lm-eval's global seeding is switched off (random, numpy and torch seeds None), so a utility pass in the middle of a
pipeline leaves the training that follows it unchanged; its few-shot sampler keeps its own seed.

`tofu_world_facts_task` writes TOFU's `world_facts_perturbed.json` (117 general-knowledge questions, each with its
answer and 3 wrong ones; TOFU, Maini et al. 2024, MIT licence) as a 4-way multiple-choice lm-eval task.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from obliviate.core.errors import UsageError

PREFIX = "lm-eval:"
DEFAULT_LIMIT = 100  # examples per task: MMLU's 57 subjects then score 5,700 questions, not 14,042
BATCH_SIZE = 8
BOOTSTRAP_ITERS = 1000  # lm-eval's bootstrap of the stderr of non-mean aggregates (its default: 100,000)
WORLD_FACTS_TASK = "tofu_world_facts"


@dataclass(frozen=True)
class UtilitySpec:
    """What `--utility`, `--utility-tasks` and `--utility-limit` ask for."""

    tasks: tuple[str, ...]
    include_path: str | None = None
    limit: int | None = DEFAULT_LIMIT
    batch_size: int = BATCH_SIZE

    def config(self) -> dict:
        return {"tasks": list(self.tasks), "include_path": self.include_path, "limit": self.limit}


def parse_utility(spec: str | None, tasks_dir: str | Path | None = None, limit: int | None = DEFAULT_LIMIT):
    """The `UtilitySpec` of `--utility lm-eval:A,B` (None without --utility); every flag is checked here, before
    any model loads. `limit` 0 means every example."""
    if spec is None:
        if tasks_dir is not None:
            raise UsageError("--utility-tasks applies with --utility lm-eval:TASKS")
        return None
    if not spec.startswith(PREFIX):
        raise UsageError(f"--utility expects lm-eval:TASK[,TASK...], got {spec!r}")
    tasks = tuple(t.strip() for t in spec[len(PREFIX) :].split(",") if t.strip())
    if not tasks:
        raise UsageError(f"--utility {spec!r} names no task (lm-eval:TASK[,TASK...])")
    if limit is not None and limit < 0:
        raise UsageError(f"--utility-limit must be >= 1 (0: every example), got {limit}")
    if tasks_dir is not None and not Path(tasks_dir).is_dir():
        raise UsageError(f"--utility-tasks {tasks_dir}: not a directory")
    return UtilitySpec(tasks, str(Path(tasks_dir).resolve()) if tasks_dir else None, limit or None)


@contextlib.contextmanager
def offline():
    """HF hub and datasets offline for the duration (the env variables and the flags their modules read at import),
    restored afterwards."""
    import datasets.config
    import huggingface_hub.constants as hub

    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    env = {k: os.environ.get(k) for k in names}
    flags = [(m, a, getattr(m, a)) for m, a in ((hub, "HF_HUB_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE"))]
    flags += [(datasets.config, "HF_DATASETS_OFFLINE", datasets.config.HF_DATASETS_OFFLINE)]
    try:
        os.environ.update({k: "1" for k in names})
        for module, attr, _ in flags:
            setattr(module, attr, True)
        yield
    finally:
        for k, v in env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        for module, attr, value in flags:
            setattr(module, attr, value)


@lru_cache(maxsize=4)
def _task_manager(include_path: str | None, defaults: bool):
    import logging

    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    return TaskManager(include_path=include_path, include_defaults=defaults)


def task_manager(spec: UtilitySpec):
    """lm-eval's TaskManager for `spec`: the local tasks alone when every task is there, lm-eval's shipped ones
    alone when none is local (indexing its ~15,000 shipped tasks costs seconds), else both. An unknown name:
    UsageError with the closest known name."""
    local = _task_manager(spec.include_path, False) if spec.include_path else None
    if local is not None and all(t in local.all_tasks for t in spec.tasks):
        return local
    shipped = _task_manager(None, True)
    known = set(shipped.all_tasks) | set(local.all_tasks if local else ())
    for t in spec.tasks:
        if t not in known:
            close = difflib.get_close_matches(t, sorted(known), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else " (`lm-eval ls tasks` lists them)"
            where = f" or in --utility-tasks {spec.include_path}" if spec.include_path else ""
            raise UsageError(f"--utility: no lm-eval task {t!r} among lm-eval's tasks{where}{hint}")
    if local is None or all(t in shipped.all_tasks for t in spec.tasks):
        return shipped
    return _task_manager(spec.include_path, True)


def _dataset_of(tm, name: str) -> str:
    """The dataset a task reads (dataset_path and data_files of its YAML), for an error message."""
    entry = getattr(tm, "_index", {}).get(name)
    cfg = dict(getattr(entry, "cfg", None) or {})
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    path = cfg.get("dataset_path") or "its dataset"
    return f"{path} {json.dumps(files)}" if files else str(path)


def load_tasks(spec: UtilitySpec) -> tuple[list, dict[str, list[str]]]:
    """(lm-eval Task / Group objects, {requested name: its task names}); a dataset that is neither a local file nor
    in the datasets cache is a UsageError naming it."""
    tm = task_manager(spec)
    objects, members = [], {}
    with offline():
        for name in spec.tasks:
            try:
                loaded = tm.load(name)
            except Exception as e:  # datasets raises many kinds: FileNotFoundError, ConnectionError, ...
                why = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise UsageError(
                    f"--utility: lm-eval task {name!r} cannot load {_dataset_of(tm, name)} offline "
                    f"(a local data file or the datasets cache): {why}"
                ) from None
            objects += [loaded["groups"][name]] if name in loaded["groups"] else list(loaded["tasks"].values())
            members[name] = list(loaded["tasks"])
    return objects, members


def check_utility(spec: UtilitySpec | str | None) -> UtilitySpec | None:
    """Every task found and its data readable, before a model loads or trains. Returns the spec; a string is read
    as `--utility` would be ("lm-eval:TASK[,TASK...]", for the Python API)."""
    if isinstance(spec, str):
        spec = parse_utility(spec)
    if spec is not None:
        load_tasks(spec)
    return spec


def check_utility_models(spec: UtilitySpec | None, models: dict[str, str]) -> None:
    """lm-eval runs on weights in memory: an endpoint (openai:URL) cannot be scored."""
    for name, path in models.items() if spec is not None else ():
        if str(path).startswith("openai:"):
            raise UsageError(
                f"--utility: lm-eval cannot load {name} ({path}): it scores local weights, not an endpoint"
            )


def _wrap(model, tok, name: str, batch_size: int):
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise UsageError(
            f"--utility: lm-eval cannot load {name}: a {type(model).__name__} is not a transformers model "
            "(lm-eval's HFLM scores transformers causal and seq2seq models)"
        )
    from lm_eval.models.huggingface import HFLM

    try:
        return HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    except (AssertionError, AttributeError, TypeError, ValueError) as e:
        raise UsageError(f"--utility: lm-eval cannot load {name}: {type(e).__name__}: {e}") from None


def _key(task: str, metric: str) -> str:
    base, _, filt = metric.partition(",")
    return f"utility/{task}/{base}" + (f"[{filt}]" if filt and filt != "none" else "")


def run_utility(model, tok, spec: UtilitySpec, name: str = "model", seed: int = 0) -> dict:
    """lm-eval's figures of `model` on `spec`'s tasks: {"values": {utility/<task>/<metric>: value}, "stderr": {key:
    lm-eval's standard error}, "n": {task: examples scored}, "intervals": {key: bootstrap interval over examples}}.
    `name` names the model in error messages; `seed` seeds the bootstrap. The model's train/eval mode is
    restored."""
    from lm_eval import simple_evaluate

    from obliviate.metrics.intervals import mean_interval

    objects, members = load_tasks(spec)
    lm = _wrap(model, tok, name, spec.batch_size)
    training = model.training
    try:
        with offline():
            res = simple_evaluate(
                model=lm,
                tasks=objects,
                task_manager=task_manager(spec),
                limit=spec.limit,
                bootstrap_iters=BOOTSTRAP_ITERS,
                log_samples=True,
                random_seed=None,
                numpy_random_seed=None,
                torch_random_seed=None,
            )
    finally:
        model.train(training)
    rows = {t: r for t, r in res["results"].items() if t in spec.tasks}
    for requested, tasks in members.items():  # a tag: its tasks' rows
        if requested not in rows:
            rows |= {t: res["results"][t] for t in tasks if t in res["results"]}
    out = {"values": {}, "stderr": {}, "n": {}, "intervals": {}}
    for task, row in rows.items():
        for metric, value in row.items():
            if "," not in metric or "_stderr," in metric or not isinstance(value, (int, float)):
                continue
            key = _key(task, metric)
            out["values"][key] = float(value)
            se = row.get(metric.replace(",", "_stderr,", 1))
            if isinstance(se, (int, float)):
                out["stderr"][key] = float(se)
            per_item = [s.get(metric.split(",")[0]) for s in res.get("samples", {}).get(task, [])]
            if per_item and all(isinstance(v, (int, float)) for v in per_item):
                out["intervals"][key] = mean_interval([float(v) for v in per_item], seed=seed)
        n = res.get("n-samples", {}).get(task, {}).get("effective")
        if n is not None:
            out["n"][task] = int(n)
    return out


def tofu_world_facts_task(source: str | Path, out: str | Path, seed: int = 0) -> Path:
    """Write TOFU's world facts (`world_facts_perturbed.json`: one {"question", "answer", "perturbed_answer": [3
    wrong answers]} per line) into OUT as the lm-eval task `tofu_world_facts`: OUT/tofu_world_facts.jsonl (question,
    4 choices in an order drawn with `seed`, the answer's index) and OUT/tofu_world_facts.yaml (multiple choice,
    "Question: ...\\nAnswer:", accuracy and length-normalised accuracy). Returns OUT, the `--utility-tasks`
    directory."""
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise UsageError(f"TOFU world facts: no file {source} (TOFU's world_facts_perturbed.json)")
    rng, rows = random.Random(seed), []
    for i, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            wrong = [str(a) for a in item["perturbed_answer"]]
            choices = [str(item["answer"]), *wrong]
            question = str(item["question"])
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{source}:{i}: expected question, answer and perturbed_answer (a list)") from None
        order = list(range(len(choices)))
        rng.shuffle(order)
        rows.append({"question": question, "choices": [choices[j] for j in order], "label": order.index(0)})
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{WORLD_FACTS_TASK}.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (out / f"{WORLD_FACTS_TASK}.yaml").write_text(
        multiple_choice_yaml(WORLD_FACTS_TASK, data.resolve()), encoding="utf-8"
    )
    return out


def multiple_choice_yaml(task: str, data: str | Path) -> str:
    """An lm-eval multiple-choice task over a local JSONL of {"question", "choices", "label"} rows."""
    return (
        f"task: {task}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {json.dumps(str(data))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "  - metric: acc_norm\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "metadata:\n"
        "  version: 1.0\n"
    )


def add_utility(found: dict, run: str, results: dict, intervals: dict) -> None:
    """Put one run's `run_utility` figures into a results document in the making: the values in results[run], the
    intervals in intervals[run], and the rest kept in `found` for `utility_config`."""
    results.setdefault(run, {}).update(found["values"])
    if found["intervals"]:
        intervals.setdefault(run, {}).update(found["intervals"])


def utility_config(spec: UtilitySpec, found: dict[str, dict]) -> dict:
    """config["utility"] of a results document: the tasks, the local task directory, the example limit, lm-eval's
    version, and per run lm-eval's standard errors; `n_samples` gets `utility_counts`."""
    from importlib.metadata import version

    return spec.config() | {
        "harness": f"lm-eval {version('lm_eval')}",
        "stderr": {run: f["stderr"] for run, f in found.items()},
    }


def utility_counts(found: dict[str, dict]) -> dict[str, int]:
    """{"utility/<task>": examples scored} for `n_samples` (the same for every run)."""
    return {f"utility/{t}": n for f in found.values() for t, n in f["n"].items()}


def utility_lines(found: dict) -> list[str]:
    """One printed line per figure: `utility/<task>/<metric>  value ± stderr (n examples)`."""
    n = found.get("n", {})
    out = []
    for key, value in found["values"].items():
        se = found["stderr"].get(key)
        task = key.split("/")[1]
        out.append(f"{key:40s} {value:.3f}" + (f" ± {se:.3f}" if se is not None else "") + f"  (n={n.get(task, '?')})")
    return out


def mean_found(found: list[dict]) -> dict:
    """The figures of a run of several models (one method, several seeds): the mean of each value; a standard error
    and an interval belong to one model, so a run of several has none."""
    if len(found) == 1:
        return found[0]
    keys = [k for k in found[0]["values"] if all(k in f["values"] for f in found)]
    values = {k: sum(f["values"][k] for f in found) / len(found) for k in keys}
    return {"values": values, "stderr": {}, "n": found[0]["n"], "intervals": {}}
