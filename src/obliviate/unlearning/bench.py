"""`obliviate bench`: every registered method on forget01/05/10 of the world, over several seeds.

Per seed: a fresh world and tokenizer, one target, one oracle per forget split; then every method unlearns
each split from the target with its tuned defaults and is evaluated against that split's oracle. The table
gives mean +- std over seeds; `leaderboard.json` keeps every run; `pareto.png` plots forget quality against
model utility relative to the target.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from obliviate.core.timer import Timer

# KLoM (`obliviate.metrics.klom`) where `--oracles K` > 1 gave each split a distribution of oracles
COLUMNS = (
    "forget_quality",
    "model_utility_ratio",
    "forget_rouge",
    "privleak",
    "seconds",
    "klom_forget",
    "klom_retain",
    "klom_holdout",
)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: list[dict]) -> dict:
    """{split: {method: {column: [mean, std]}}} over seeds."""
    out: dict = {}
    for r in runs:
        out.setdefault(r["split"], {}).setdefault(r["method"], []).append(r)
    return {
        split: {
            m: {c: list(_mean_std([x[c] for x in rs])) for c in COLUMNS if all(c in x for x in rs)}
            for m, rs in methods.items()
        }
        for split, methods in out.items()
    }


def format_table(agg: dict) -> str:
    lines = []
    for split, methods in agg.items():
        lines.append(f"\n{split}  (mean ± std over seeds)")
        klom = any("klom_forget" in cols for cols in methods.values())
        lines.append(
            f"{'method':14s} {'forget_quality':>20s} {'MU / target':>16s} {'forget_rouge':>16s} "
            f"{'privleak':>18s} {'seconds':>12s}" + (f" {'KLoM forget':>16s}" if klom else "")
        )
        for m, cols in methods.items():
            cell = lambda c, f: f"{cols[c][0]:{f}} ± {cols[c][1]:{f}}" if c in cols else "-"
            lines.append(
                f"{m:14s} {cell('forget_quality', '.2e'):>20s} {cell('model_utility_ratio', '.3f'):>16s} "
                f"{cell('forget_rouge', '.3f'):>16s} {cell('privleak', '.1f'):>18s} "
                f"{cell('seconds', '.1f'):>12s}" + (f" {cell('klom_forget', '.3f'):>16s}" if klom else "")
            )
    return "\n".join(lines)


def pareto_plot(agg: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(agg), figsize=(5 * len(agg), 4.5), squeeze=False)
    for ax, (split, methods) in zip(axes[0], agg.items()):
        for i, (m, cols) in enumerate(methods.items()):
            if "forget_quality" not in cols or "model_utility_ratio" not in cols:
                continue
            x, xs = cols["model_utility_ratio"]
            y = max(cols["forget_quality"][0], 1e-30)
            ax.errorbar(x, y, xerr=xs, fmt="os^Dv"[i % 5], color=plt.cm.tab20(i % 20), capsize=2)
            ax.annotate(m, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_yscale("log")
        ax.axhline(0.05, color="grey", lw=0.8, ls="--")
        ax.axvline(0.9, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("model utility / target's")
        ax.set_ylabel("forget quality (KS p-value, log)")
        ax.set_title(split)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _resume_state(out: Path, settings: dict) -> list[dict]:
    from obliviate.core.errors import UsageError

    saved = out / "bench_settings.json"
    if saved.is_file():
        try:
            before = json.loads(saved.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise UsageError(f"cannot resume {out}: {saved} is not valid JSON; use a new --out") from None
        if before != settings:
            raise UsageError(f"cannot resume {out}: it was started with other settings; use a new --out")
    runs = []
    path = out / "runs.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):  # a line cut by the interruption: that run is redone
                break
            if not (isinstance(row, dict) and {"seed", "split", "method"} <= row.keys()):
                break
            runs.append(row)
        path.write_text("".join(json.dumps(r) + "\n" for r in runs), encoding="utf-8")
    return runs


def run_bench(
    out: Path,
    *,
    seeds: list[int],
    splits: list[str],
    methods: list[str] | None = None,
    finetune_steps: int = 300,
    people: int = 200,
    progress: bool = False,
    resume: bool = False,
    oracles: int = 1,
) -> dict:
    """Run the leaderboard. Every finished run is appended to OUT/runs.jsonl and the target / oracle models
    stay in OUT/seedN/models, so `resume=True` after an interruption redoes only what is missing."""
    from rich.console import Console

    from obliviate.benchmarks.layouts import SUITES
    from obliviate.core.jsonio import write_json
    from obliviate.core.outputs import check_output, output_dir
    from obliviate.data.schema import load_qa
    from obliviate.data.world import WorldSpec, world_texts, write_world
    from obliviate.engine.evaluate import run_metrics, score_model
    from obliviate.engine.train import TrainConfig, train
    from obliviate.models.load import load_model, model_dir_complete
    from obliviate.models.tiny import build_tokenizer
    from obliviate.runs.results import results_document
    from obliviate.unlearning.methods import METHODS, with_oracle
    from obliviate.unlearning.run import idk_pool, unlearning_parts
    from obliviate.unlearning.world_models import oracle_names, train_world_models

    clock = Timer()
    console = Console(stderr=True, log_path=False)
    classes = {n: METHODS.get(n) for n in (methods or METHODS.names())}
    suite = SUITES.get("world")
    for s in splits:
        suite.train_paths(Path("."), s)  # validates the split names before any work
    settings = {
        "seeds": seeds,
        "splits": splits,
        "methods": list(classes),
        "finetune_steps": finetune_steps,
        "people": people,
        **({"oracles": oracles} if oracles > 1 else {}),  # one oracle: the settings of earlier benches
    }
    names = oracle_names(seeds[0] if seeds else 0, oracles)  # --oracles 0 fails before any work
    check_output(out, "bench", resume=resume)
    with output_dir(out, "bench", resume=resume) as o:
        runs = _resume_state(o, settings) if resume else []
        write_json(o / "bench_settings.json", settings)
        done = {(r["seed"], r["split"], r["method"]) for r in runs}
        log = (o / "runs.jsonl").open("a", encoding="utf-8")
        for seed in seeds:
            world = o / f"seed{seed}" / "world"
            write_world(world, WorldSpec(seed=seed, n_people=people))
            tok = build_tokenizer(world_texts(world))
            models = o / f"seed{seed}" / "models"
            if not model_dir_complete(models / "target"):  # absent, or a save cut short: (re)train it
                train_world_models(world, models, steps=finetune_steps, seed=seed, tokenizer=tok, only="target")
            for split in splits:
                if all((seed, split, m) in done for m in ("target", *classes)):
                    continue
                names = oracle_names(seed, oracles)
                if not all(model_dir_complete(models / split / n) for n in names):
                    train_world_models(
                        world,
                        models / split,
                        forget_split=split,
                        steps=finetune_steps,
                        seed=seed,
                        tokenizer=tok,
                        only=tuple(names),
                        oracles=oracles,
                    )
                data = suite.eval_data(world, split)
                dist = [score_model(load_model(str(models / split / n))[0], tok, data) for n in names]
                oracle_rows = dist[0]
                target = run_metrics([score_model(load_model(str(models / "target"))[0], tok, data)], oracle_rows, dist)
                forget_path, retain_path = suite.train_paths(world, split)
                parts = unlearning_parts(load_qa(forget_path), load_qa(retain_path), idk_pool(None), seed)
                for name, cls in {"target": None, **classes}.items():
                    if (seed, split, name) in done:
                        continue
                    if cls is None:
                        metrics, secs = target, 0.0
                    else:
                        net, _ = load_model(str(models / "target"))
                        method = with_oracle(cls, str(models / split / names[0]))
                        net, res = train(
                            net, tok, method, parts, TrainConfig(seed=seed, checkpoint_every=0, progress=progress)
                        )
                        metrics, secs = run_metrics([score_model(net, tok, data)], oracle_rows, dist), res.seconds
                    row = {"seed": seed, "split": split, "method": name, "seconds": secs, **metrics}
                    if target["model_utility"] > 0:
                        row["model_utility_ratio"] = metrics["model_utility"] / target["model_utility"]
                    runs.append(row)
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    console.log(
                        f"seed {seed} {split} {name}: FQ {row['forget_quality']:.2e}, "
                        f"MU {row.get('model_utility_ratio', float('nan')):.3f}x ({clock():.0f} s)"
                    )
        log.close()
        agg = aggregate(runs)
        doc = results_document(
            {
                "seeds": seeds,
                "splits": splits,
                "finetune_steps": finetune_steps,
                "people": people,
                "methods": {n: c().__dict__ for n, c in classes.items()},
                **({"oracles": oracles} if oracles > 1 else {}),
            },
            {
                f"{r['method']}@{r['split']}@seed{r['seed']}": {k: v for k, v in r.items() if isinstance(v, float)}
                for r in runs
            },
            {},
            {"leaderboard": agg, "wall_seconds": round(clock(), 1)},
        )
        write_json(o / "leaderboard.json", doc)
        pareto_plot(agg, o / "pareto.png")
    print(format_table(agg))
    print(f"\nwrote {out}/leaderboard.json and {out}/pareto.png; wall time {clock():.0f} s")
    return doc
