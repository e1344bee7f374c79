"""`obliviate demo`: the whole pipeline on the built-in world, in about two minutes on a laptop CPU.

world -> tokenizer -> target (all training data) + oracle (all but forget10) -> every registered method
unlearns forget10 from the target -> every run is evaluated -> table, results.json, samples.jsonl, report.md.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from obliviate.core.pool import Workers
from obliviate.core.timer import Timer

# The demo's default methods: the TOFU baselines plus NPO/SimNPO, which fit the ~2-minute budget on a 2-core
# CPU. `--methods all` runs every registered method; `obliviate bench` compares them all over seeds and splits.
DEMO_METHODS = ("grad_ascent", "grad_diff", "npo", "simnpo", "idk_nll", "idk_dpo")


def run_demo(
    out: Path,
    *,
    seed: int = 0,
    methods: list[str] | None = None,
    forget_split: str = "forget10",
    finetune_steps: int = 300,
    progress: bool = True,
    started: float | None = None,
    guards: bool = False,
    workers: int | None = None,
    oracles: int = 1,
    unlearn_seeds: int = 1,
    utility=None,
) -> dict:
    """`oracles` K > 1 trains K oracles (seeds seed .. seed+K-1) and `unlearn_seeds` S > 1 runs each method with
    seeds seed .. seed+S-1 (models/NAME, models/NAME@seed{seed+s}); each method's row is then the mean over its
    seeds, with KLoM and pooled forget quality against the oracles (`obliviate.metrics.klom`). `utility` (an
    `obliviate.engine.utility.UtilitySpec`): lm-eval's figures of every trained model (a method's mean over its
    seeds; not the guard rows), as `utility/<task>/<metric>`."""
    from rich.console import Console

    from obliviate.benchmarks.layouts import eval_data
    from obliviate.core.errors import UsageError
    from obliviate.core.jsonio import write_json
    from obliviate.core.outputs import output_dir
    from obliviate.data.schema import write_jsonl
    from obliviate.data.world import WorldSpec, world_texts, write_world
    from obliviate.engine.evaluate import run_metrics, sample_rows
    from obliviate.engine.utility import (
        add_utility,
        check_utility,
        mean_found,
        run_utility,
        utility_config,
        utility_counts,
    )
    from obliviate.metrics.fluency import collapse_reasons
    from obliviate.models.load import load_model
    from obliviate.models.tiny import build_tokenizer
    from obliviate.report.markdown import table, write_report
    from obliviate.runs.results import results_document
    from obliviate.unlearning.methods import METHODS
    from obliviate.unlearning.world_models import oracle_names

    if unlearn_seeds < 1:
        raise UsageError(f"--unlearn-seeds must be >= 1, got {unlearn_seeds}")
    oracle_runs = oracle_names(seed, oracles)
    clock = Timer(started)
    console = Console(stderr=True, quiet=not progress, log_path=False)
    names = METHODS.names() if methods == ["all"] else (methods or list(DEMO_METHODS))
    classes = {n: METHODS.get(n) for n in names}  # fail on an unknown name before doing any work
    utility = check_utility(utility)
    out = Path(out)
    with output_dir(out, "demo:world", replace=True) as o:
        world = o / "world"
        write_world(world, WorldSpec(seed=seed))
        tok = build_tokenizer(world_texts(world))
        console.log(f"world written to {world}; tokenizer has {len(tok)} tokens")
        splits = eval_data(world, forget_split)
        job = {
            "out": str(o),
            "world": str(world),
            "forget_split": forget_split,
            "seed": seed,
            "finetune_steps": finetune_steps,
            "oracles": oracles,
        }
        members = {n: [n, *(f"{n}@seed{seed + s}" for s in range(1, unlearn_seeds))] for n in classes}
        unlearn_jobs = [
            {"name": key, "method": n, "unlearn_seed": seed + s} for n in classes for s, key in enumerate(members[n])
        ]
        tok.save_pretrained(o / ".tokenizer")  # the workers' tokenizer: the very one built here
        rows, seconds = {}, {}
        try:
            with Workers(workers) as pool:
                # target and oracle are independent, and so are the methods once the target exists: with 2
                # workers each stage runs as two single-thread processes (this 0.6M model's matmuls are too small
                # to keep two threads busy; docs/benchmarks.md, "The world demo")
                for stage in ([{"name": n} for n in ("target", *oracle_runs)], unlearn_jobs):
                    for name, r, secs, steps in pool.map(_run_job, [job | j for j in stage]):
                        rows[name], seconds[name] = r, secs
                        console.log(f"{name}: {steps} steps in {secs:.1f} s")
        finally:  # a failed or interrupted run leaves no worker scratch behind
            shutil.rmtree(o / ".tokenizer", ignore_errors=True)

        guard_rows = guard_runs(o, tok, splits, rows, world, forget_split, seed, console) if guards else {}
        rows |= guard_rows
        # a run of several seeds: the mean of its models' figures; KLoM against the oracles (with several), the
        # oracle's own row against the other oracles
        dist = [rows[k] for k in oracle_runs]
        results = {
            name: run_metrics(
                [rows[k] for k in members.get(name, [name])], rows["oracle"], dist[1:] if name == "oracle" else dist
            )
            for name in ("target", "oracle", *classes, *guard_rows)  # the documented order
        }
        for n in classes if unlearn_seeds > 1 else ():
            seconds[n] = sum(seconds.pop(k) for k in members[n]) / len(members[n])  # a run's seconds: the mean
        found, intervals = {}, {}
        for name in results if utility else ():
            if name in guard_rows:
                continue
            keys = members.get(name, [name])
            found[name] = mean_found([run_utility(*load_model(str(o / "models" / k)), utility, k, seed) for k in keys])
            add_utility(found[name], name, results, intervals)
            console.log(f"{name}: utility " + ", ".join(f"{k} {v:.3f}" for k, v in found[name]["values"].items()))
        config = {
            "seed": seed,
            "forget_split": forget_split,
            "finetune_steps": finetune_steps,
            "guards": guards,
            "methods": {n: METHODS.get(n)().__dict__ for n in classes},
            **({"oracles": oracles, "unlearn_seeds": unlearn_seeds} if oracles > 1 or unlearn_seeds > 1 else {}),
            **({"utility": utility_config(utility, found)} if utility else {}),
        }
        wall = clock()
        doc = results_document(
            config,
            results,
            {s: len(v) for s, v in splits.items()} | utility_counts(found),
            {
                **({"intervals": intervals} if intervals else {}),
                "seconds": {k: round(v, 2) for k, v in seconds.items()},
                "wall_seconds": round(wall, 1),
                "collapse": {name: collapse_reasons(r) for name, r in results.items()},
            },
        )
        samples = [
            s | {"model": j} if len(members.get(name, ())) > 1 else s
            for name in results
            for j, key in enumerate(members.get(name, [name]))
            for s in sample_rows(name, rows[key])
        ]
        write_jsonl(o / "samples.jsonl", samples)
        write_json(o / "results.json", doc)
        write_report(o / "report.md", doc)
    print(table(doc))
    print(f"\nwrote {out}/results.json, samples.jsonl, report.md; models in {out}/models")
    print(f"demo wall time: {clock():.1f} s")
    return doc


def _run_job(job: dict) -> tuple[str, dict, float, int]:
    """One demo model in a worker (or in-process): "target" / "oracle" are fine-tuned from scratch, any other name
    is a method unlearning forget_split from the saved target. Saves the model, scores it; returns (name, rows,
    training seconds, steps)."""
    from transformers import AutoTokenizer

    from obliviate.benchmarks.layouts import SUITES, eval_data
    from obliviate.data.schema import load_qa
    from obliviate.engine.evaluate import score_model
    from obliviate.engine.train import TrainConfig, train
    from obliviate.models.load import load_model, save_model
    from obliviate.unlearning.methods import METHODS, with_oracle
    from obliviate.unlearning.run import idk_pool, unlearning_parts
    from obliviate.unlearning.world_models import train_world_models

    o, world, name, seed = Path(job["out"]), Path(job["world"]), job["name"], job["seed"]
    if name in ("target", "oracle") or name.startswith("oracle_seed"):  # not a method named oracle_...
        tok = AutoTokenizer.from_pretrained(o / ".tokenizer")
        secs = train_world_models(
            world,
            o / "models",
            forget_split=job["forget_split"],
            steps=job["finetune_steps"],
            seed=seed,
            only=name,
            tokenizer=tok,
            oracles=job.get("oracles", 1),
        )[name]
        steps = job["finetune_steps"]
        net, tok = load_model(str(o / "models" / name))
    else:
        forget_path, retain_path = SUITES.get("world").train_paths(world, job["forget_split"])
        seed = job.get("unlearn_seed", seed)
        parts = unlearning_parts(load_qa(forget_path), load_qa(retain_path), idk_pool(None), seed)
        net, tok = load_model(str(o / "models" / "target"))
        method = with_oracle(METHODS.get(job.get("method", name)), str(o / "models" / "oracle"))
        net, res = train(net, tok, method, parts, TrainConfig(seed=seed, checkpoint_every=0, progress=False))
        save_model(net, tok, o / "models" / name)
        secs, steps = res.seconds, res.steps
    return name, score_model(net, tok, eval_data(world, job["forget_split"])), secs, steps


def guard_runs(o: Path, tok, splits, rows, world: Path, forget_split: str, seed: int, console) -> dict:
    """`--guards`: ECO (sigma searched to the oracle's forget value accuracy) and GUARD, fitted on the target and
    evaluated on it with the guard applied (generation and teacher-forced pass). Guard directories go to
    OUT/guards/."""
    from obliviate.audit.inputs import unlearning_inputs
    from obliviate.engine.evaluate import score_model
    from obliviate.engine.hooks import attach
    from obliviate.guards.base import GUARDS, load_all, save_guard
    from obliviate.models.load import load_model

    load_all()
    inputs = unlearning_inputs(data=world, layout="world", forget_split=forget_split)
    oracle_acc = sum(r["value_hit"] for r in rows["oracle"]["forget"]) / max(1, len(rows["oracle"]["forget"]))
    out = {}
    for name, options in (("eco", {"target_accuracy": oracle_acc, "seed": seed}), ("guard", {"seed": seed})):
        net, _ = load_model(str(o / "models" / "target"))
        g = GUARDS.get(name).fit(net, tok, inputs, **options)
        g.attach(net, tok)
        save_guard(
            g, o / "guards" / name, extra={"model": str(o / "models" / "target"), "report": g.report(net, tok, inputs)}
        )
        attach(net, [g])
        out[f"target+{name}"] = score_model(net, tok, splits)
        console.log(f"guard {name} fitted and evaluated")
    return out
