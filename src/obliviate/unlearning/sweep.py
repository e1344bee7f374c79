"""`obliviate sweep`: a grid over one method's options, and the best point by a declared criterion.

The criterion is explicit and printed with the result: maximise `--maximize` (default forget_quality) among the
points whose model utility is at least `--min-utility-ratio` (default 0.9) times the target's. Forget quality is
noisy (see docs/benchmarks.md); a sweep picks hyper-parameters, and the pick should be confirmed on other seeds.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from obliviate.core.errors import UsageError


def parse_grid(grid: str) -> dict[str, list[str]]:
    """'lr=1e-4,3e-4 beta=0.05,0.1' -> {"lr": ["1e-4", "3e-4"], "beta": ["0.05", "0.1"]}."""
    out: dict[str, list[str]] = {}
    for chunk in grid.split():
        key, sep, values = chunk.partition("=")
        vals = [v for v in values.split(",") if v]
        if not sep or not key or not vals:
            raise UsageError(f"--grid: expected KEY=V1,V2,... separated by spaces, got {chunk!r}")
        if key in out:
            raise UsageError(f"--grid: {key!r} appears twice")
        out[key] = vals
    if not out:
        raise UsageError("--grid is empty")
    return out


def pick_best(points: list[dict], maximize: str, target_utility: float, min_ratio: float) -> dict | None:
    """The point with the largest `maximize` among those with utility >= min_ratio * target; None if none."""
    ok = [p for p in points if p["metrics"]["model_utility"] >= min_ratio * target_utility]
    return max(ok, key=lambda p: p["metrics"].get(maximize, float("-inf")), default=None)


def run_sweep(
    method: str,
    grid: str,
    *,
    model: str,
    oracle: str,
    data: Path,
    out: Path,
    forget_split: str = "forget10",
    seed: int = 0,
    maximize: str = "forget_quality",
    min_utility_ratio: float = 0.9,
    idk: Path | None = None,
    prompt_format=None,
) -> dict:
    from obliviate.benchmarks.layouts import SUITES
    from obliviate.core.jsonio import write_json
    from obliviate.core.outputs import check_output, output_dir
    from obliviate.data.schema import load_qa
    from obliviate.engine.evaluate import metrics_from_rows, score_model
    from obliviate.engine.train import TrainConfig, train
    from obliviate.metrics import METRICS
    from obliviate.models.load import load_model
    from obliviate.unlearning.methods import METHODS
    from obliviate.unlearning.run import idk_pool, unlearning_parts

    cls = METHODS.get(method)
    axes = parse_grid(grid)
    combos = [dict(zip(axes, vals)) for vals in itertools.product(*axes.values())]
    for c in combos:  # validate every point before any training
        cls.from_options(c)
    if maximize not in METRICS:
        METRICS.get(maximize)
    suite = SUITES.get("world")
    splits = suite.eval_data(Path(data), forget_split)
    forget_path, retain_path = suite.train_paths(Path(data), forget_split)
    parts = unlearning_parts(load_qa(forget_path), load_qa(retain_path), idk_pool(idk), seed)
    inputs = (model, oracle, data, idk)
    check_output(out, "sweep", inputs=inputs)
    oracle_net, tok = load_model(oracle, prompt_format=prompt_format)
    oracle_rows = score_model(oracle_net, tok, splits)
    target_net, _ = load_model(model, prompt_format=prompt_format)
    target_utility = metrics_from_rows(score_model(target_net, tok, splits), oracle_rows)["model_utility"]
    with output_dir(out, "sweep", inputs=inputs) as o:
        points = []
        for i, combo in enumerate(combos, 1):
            net, _ = load_model(model, prompt_format=prompt_format)
            net, res = train(net, tok, cls.from_options(combo), parts, TrainConfig(seed=seed, checkpoint_every=0))
            metrics = metrics_from_rows(score_model(net, tok, splits), oracle_rows)
            points.append({"options": combo, "metrics": metrics, "seconds": round(res.seconds, 2)})
            print(
                f"[{i}/{len(combos)}] {' '.join(f'{k}={v}' for k, v in combo.items())}: "
                f"{maximize} {metrics.get(maximize, float('nan')):.3g}, "
                f"utility {metrics['model_utility'] / target_utility:.3f}x target",
                flush=True,
            )
        best = pick_best(points, maximize, target_utility, min_utility_ratio)
        doc = {
            "method": method,
            "grid": axes,
            "criterion": {"maximize": maximize, "min_utility_ratio": min_utility_ratio},
            "target_model_utility": target_utility,
            "seed": seed,
            "forget_split": forget_split,
            "points": points,
            "best": best,
            **(prompt_format.config() if prompt_format else {}),
        }
        write_json(o / "sweep.json", doc)
    if best is None:
        print(f"no point reaches model utility >= {min_utility_ratio} x target ({target_utility:.3f})")
    else:
        print(f"best ({maximize}, utility >= {min_utility_ratio} x target): {best['options']}")
    return doc
