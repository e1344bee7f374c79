"""`obliviate demo --suite refusal`: train the unaligned target, run every refusal method, measure, plot.

Runs (results.json keys): `target` (unaligned), one per refusal method (`refusal_sft`, `derta`, `qi_augment`,
`refusal_tokens`, `r_tuning`, `safe_eraser`), the ablations `derta_mle_only`, `derta_rto_only` and
`safe_eraser_no_pd`, and a fine-tuning attack on the DeRTa model with plain SFT (`attack_sft`) and with Qi et al.'s
token-wise constrained objective (`attack_token_constrained`), on the same harmful examples.
"""

from __future__ import annotations

from pathlib import Path

from obliviate.core.errors import UsageError

# run name -> (refusal method, options)
RUNS: dict[str, tuple[str, dict]] = {
    "refusal_sft": ("refusal_sft", {}),
    "derta": ("derta", {}),
    "derta_mle_only": ("derta", {"rto": False}),
    "derta_rto_only": ("derta", {"mle": False}),
    "qi_augment": ("qi_augment", {}),
    "refusal_tokens": ("refusal_tokens", {}),
    "r_tuning": ("r_tuning", {}),
    "safe_eraser": ("safe_eraser", {}),
    "safe_eraser_no_pd": ("safe_eraser", {"pd_weight": 0.0}),
}
HOLDOUT_PEOPLE = 60
ATTACK_EXAMPLES = 32  # harmful (fictional) examples the fine-tuning attack trains on
ATTACK_STEPS = 40


def plot_depth(results: dict, path: Path, depths=(0, 5, 10, 20, 40)) -> None:
    """Refusal rate against prefill depth, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, m) in enumerate(results.items()):
        ys = [m.get("refusal_rate" if k == 0 else f"refusal_rate@prefill{k}") for k in depths]
        if None in ys:
            continue
        # matplotlib cycles 10 colours: change the line style after them so that no two runs look alike
        ax.plot(depths, ys, marker="os^"[i // 10 % 3], linestyle=("-", "--", ":")[i // 10 % 3], label=name)
    ax.set_xlabel("prefill depth k (tokens of the harmful answer put before the reply)")
    ax.set_ylabel("refusal rate on harmful test prompts")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xticks(list(depths))
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_refusal_demo(
    out: Path,
    *,
    seed: int = 0,
    methods: list[str] | None = None,
    people: int = 200,
    finetune_steps: int = 400,
    align_steps: int | None = None,
    attack: bool = True,
    attack_steps: int = ATTACK_STEPS,
    eval_limit: int | None = None,
    max_new_tokens: int = 48,
    progress: bool = True,
    started: float | None = None,
    guards: bool = False,
    utility=None,
) -> dict:
    """`eval_limit` / `max_new_tokens` shrink the evaluation for smoke tests; the defaults measure everything.
    `utility` (an `obliviate.engine.utility.UtilitySpec`, `--utility lm-eval:TASKS`): lm-eval's figures of every run,
    guards attached, as `utility/<task>/<metric>`."""

    from rich.console import Console

    from obliviate.core.jsonio import write_json
    from obliviate.core.outputs import output_dir
    from obliviate.core.timer import Timer
    from obliviate.data.schema import write_jsonl
    from obliviate.data.world import WorldSpec, write_world
    from obliviate.engine.train import FineTune, TrainConfig, train
    from obliviate.engine.utility import add_utility, check_utility, run_utility, utility_config, utility_counts
    from obliviate.models.load import load_model, save_model
    from obliviate.models.tiny import build_model, build_tokenizer
    from obliviate.refusal.align import align, evaluate, refusal_data, suite_texts, target_pairs
    from obliviate.refusal.methods import REFUSAL_METHODS
    from obliviate.refusal.methods.refusal_tokens import ThresholdGenerator
    from obliviate.refusal.methods.token_constrained import TokenConstrained
    from obliviate.runs.results import results_document

    clock = Timer(started)
    console = Console(stderr=True, quiet=not progress, log_path=False)
    runs = dict(RUNS) if not methods or methods == ["all"] else {}
    for m in methods or []:
        if m != "all":
            REFUSAL_METHODS.get(m)  # did-you-mean before any work
            runs[m] = (m, {})
    utility = check_utility(utility)  # an unknown task or a missing dataset fails before any training
    out = Path(out)
    with output_dir(out, "demo:refusal", replace=True) as o:
        world = o / "world"
        # 60 held-out people: 30 for R-Tuning's unknown questions, 30 never seen by any model for its evaluation
        write_world(world, WorldSpec(seed=seed, n_people=people, n_holdout_people=HOLDOUT_PEOPLE))
        tok = build_tokenizer(suite_texts(world))
        data, eval_people = refusal_data(world, seed)
        cfg = TrainConfig(retain_batch_size=100, seed=seed, warmup_steps=20, checkpoint_every=0, progress=progress)
        target, res = train(
            build_model(tok, seed=seed),
            tok,
            FineTune(lr=3e-3, steps=finetune_steps),
            {"retain": target_pairs(world)},
            cfg,
        )
        save_model(target, tok, o / "models" / "target")
        seconds = {"target": res.seconds}
        console.log(f"unaligned target trained in {res.seconds:.1f} s")

        results, samples, positions, found = {}, [], {}, {}

        def record(name, net, t, generator=None):
            m, s, d = evaluate(net, t, world, eval_people, seed, generator, max_new_tokens, eval_limit)
            results[name], positions[name] = m, d
            samples.extend(x | {"run": name} for x in s)
            if utility:
                found[name] = run_utility(net, t, utility, name, seed)
            console.log(
                f"{name}: refusal {m['refusal_rate']:.2f} @prefill20 {m['refusal_rate@prefill20']:.2f} "
                f"over-refusal {m['over_refusal_rate']:.2f} people {m['people_accuracy']:.2f}"
            )

        record("target", target, tok)
        options = {}
        for name, (method, opts) in runs.items():
            meth = REFUSAL_METHODS.get(method).from_options(opts)
            if align_steps:
                meth.steps = align_steps
            options[name] = {"method": method, **meth.__dict__}
            net, t = load_model(str(o / "models" / "target"))
            net, t, r = align(net, t, meth, data, seed=seed, progress=progress)
            seconds[name] = r.seconds
            save_model(net, t, o / "models" / name)
            record(name, net, t, ThresholdGenerator() if method == "refusal_tokens" else None)

        if guards:
            if "refusal_sft" not in runs:
                raise UsageError("--guards guards the refusal_sft model: include refusal_sft in --methods")
            from obliviate.engine.hooks import attach
            from obliviate.guards.base import GUARDS, load_all, save_guard
            from obliviate.refusal.align import policy_rows

            load_all()
            # ADA-LP's benign training replies also include the people questions the methods train on (never the
            # evaluation people): without them its probe halted 65% of people answers (people accuracy 0.35).
            # The latent guard keeps the paper's harmful-vs-harmless instructions: people questions in its
            # harmless centroid pulled it towards ordinary questions and its AUROC fell from 0.993 to 0.740.
            people = [
                {"prompt": it.question, "answer": it.answer, "kind": "benign", "category": "people"}
                for it in data.people
            ]
            test = policy_rows(world, "policy_test")
            fit_inputs = {
                "ada_lp": {"policy_train": data.harmful + data.benign + people, "policy_test": test},
                "latent": {"policy_train": data.harmful + data.benign, "policy_test": test},
            }
            options["guards"] = {}
            for gname in ("ada_lp", "latent"):
                inputs = fit_inputs[gname]
                net, t = load_model(str(o / "models" / "refusal_sft"))
                g = GUARDS.get(gname).fit(net, t, inputs)
                g.attach(net, t)
                fit_report = g.report(net, t, inputs)  # held-out: the world's policy_test prompts
                save_guard(
                    g, o / "guards" / gname, extra={"model": str(o / "models" / "refusal_sft"), "report": fit_report}
                )
                options["guards"][gname] = fit_report
                console.log(f"guard {gname}: " + ", ".join(f"{k} {v:.3f}" for k, v in fit_report.items()))
                attach(net, [g])
                record(f"refusal_sft+{gname}", net, t)

        if attack and "derta" in runs:
            import random

            rng = random.Random(seed)
            shots = rng.sample(data.harmful, min(ATTACK_EXAMPLES, len(data.harmful)))
            pairs = [(r["prompt"], r["answer"]) for r in shots]
            for name, meth in (
                ("attack_sft", FineTune(lr=1e-3, steps=attack_steps)),
                ("attack_token_constrained", TokenConstrained(lr=1e-3, steps=attack_steps)),
            ):
                net, t = load_model(str(o / "models" / "derta"))
                part = "retain" if name == "attack_sft" else "finetune"
                net, r = train(
                    net,
                    t,
                    meth,
                    {part: pairs},
                    TrainConfig(retain_batch_size=16, seed=seed, checkpoint_every=0, progress=progress),
                )
                seconds[name] = r.seconds
                record(name, net, t)
            options["attack"] = {"start": "derta", "examples": len(pairs), "steps": attack_steps, "lr": 1e-3}

        base = results["target"]["people_accuracy"]
        for m in results.values():
            m["utility_vs_target"] = m["people_accuracy"] / base if base else None
        config = {
            "suite": "refusal",
            "seed": seed,
            "people": people,
            "finetune_steps": finetune_steps,
            "eval_limit": eval_limit,
            "max_new_tokens": max_new_tokens,
            "runs": options,
            **({"utility": utility_config(utility, found)} if utility else {}),
        }
        intervals = {}
        for name, f in found.items():
            add_utility(f, name, results, intervals)
        n = {s: len(data.harmful if s == "harmful" else data.benign) for s in ("harmful", "benign")}
        doc = results_document(
            config,
            results,
            {"train_" + k: v for k, v in n.items()} | utility_counts(found),
            {
                **({"intervals": intervals} if intervals else {}),
                "refusal_positions": positions,
                "seconds": {k: round(v, 2) for k, v in seconds.items()},
                "wall_seconds": round(clock(), 1),
            },
        )
        write_jsonl(o / "samples.jsonl", samples)
        write_json(o / "results.json", doc)
        plot_depth(results, o / "refusal_depth.png")
    _print_table(results)
    print(f"\nwrote {out}/results.json, samples.jsonl, refusal_depth.png; models in {out}/models")
    print(f"refusal demo wall time: {clock():.1f} s")
    return doc


COLUMNS = (
    "refusal_rate",
    "refusal_rate@prefill5",
    "refusal_rate@prefill20",
    "refusal_rate@prefill40",
    "over_refusal_rate",
    "heldout_refusal_rate@prefill20",
    "sarr",
    "people_accuracy",
    "uncertain_rate_unknown",
)


def _print_table(results: dict) -> None:
    head = ["run", "refuse", "@5", "@20", "@40", "over", "heldout@20", "sarr", "people", "unsure?"]
    print(" | ".join(f"{h:>10s}" if i else f"{h:26s}" for i, h in enumerate(head)))
    for name, m in results.items():
        vals = [m.get(c) for c in COLUMNS]
        print(" | ".join([f"{name:26s}"] + [f"{v:10.3f}" if v is not None else f"{'-':>10s}" for v in vals]))
