"""`obliviate demo --suite real --model DIR`: the whole pipeline on a pretrained chat model, offline.

Unlearning (a slice of the built-in world):
    world slice (retain people + forget people + a few world facts; holdout people never trained)
    -> target: the chat model fine-tuned on the slice; oracle: the same without the forget people
    -> npo, grad_diff, idk_nll, simnpo unlearn the forget people from the target (LoRA)
    -> TOFU metrics beside the oracle, and a relearning attack on every run.

Refusal (public prompt sets, read from --public-data, laid out as the team's shared data folder):
    the chat model as it is ("base") -> refusal_sft and derta trained on AdvBench prompts with every near-duplicate
    of HarmBench-val / JailbreakBench removed (`align --exclude`), self-generated harmful prefixes and
    self-distilled benign replies -> refusal on HarmBench val and JailbreakBench, over-refusal on XSTest's safe
    prompts, refusal at prefill depths -> refusal-direction ablation (Arditi et al.) of the DeRTa model.

Everything is in one results.json (runs: target, oracle, the unlearning methods, base, refusal_sft, derta,
derta_ablated) and one printed table. Sizes: `FULL` is the benchmark-size run, `SMOKE` the tests' run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from obliviate.audit.runner import plan, run_audit
from obliviate.core.errors import UsageError
from obliviate.demos.real_direction import ablate_refusal_direction

UNLEARN_METHODS = ("npo", "grad_diff", "idk_nll", "simnpo")
REFUSAL_METHODS = ("refusal_sft", "derta")
PUBLIC_FILES = {
    "harmbench": "harmbench/harmbench_behaviors_text_val.csv",
    "jailbreakbench": "jailbreakbench/harmful_behaviors_jailbreakbench.csv",
    "xstest": "xstest/xstest_prompts.csv",
    "advbench": "advbench/harmful_behaviors.csv",
}
# TOFU's 117 world-facts questions (MIT), each with its answer and 3 wrong ones: the 4-way multiple-choice utility
# figure of every run, through lm-eval (`obliviate.engine.utility`)
WORLD_FACTS_FILE = "tofu/world_facts_perturbed.json"
UTILITY_KEY = "utility/tofu_world_facts/acc"


@dataclass(frozen=True)
class RealDemoSize:
    # sized to fit 40 minutes of this 2-core CPU (docs/benchmarks.md, "The real-model demo")
    retain_people: int = 12  # 5 QA each
    forget_people: int = 4
    holdout_people: int = 4
    facts: int = 6  # world facts trained with the retain people (utility probe)
    finetune_steps: int = 100  # ~9 epochs of the 86 QA (130 QA at 150 steps: forget ROUGE 1.000; 100, lr 1e-3: 0.844)
    finetune_lr: float = 2e-3
    finetune_lora_r: int = 32
    unlearn_steps: int = 20
    unlearn_lora_r: int = 16
    batch_size: int = 8
    relearn_steps: int = 10
    prompts_per_set: int = 40  # evaluation prompts per public set
    train_prompts: int = 128  # AdvBench training prompts (after removing near-duplicates)
    align_steps: int = 40
    align_lr: float = 1.5e-3
    # public data has no people facts: the retain part would be a second batch of self-distilled benign replies.
    # Dropping it cut a DeRTa step 15% and, at 60 steps, raised HarmBench refusal 0.825 -> 1.000 and over-refusal
    # 0.05 -> 0.15 (at 50 steps: 0.975 and 0.150; hence 40 steps)
    align_retain_weight: float = 0.0
    align_lora_r: int = 16
    reply_tokens: int = 32  # self-generated prefixes and benign replies
    max_new_tokens: int = 32
    depths: tuple[int, ...] = (20,)
    # the refusal direction's prompts per class (Arditi et al.'s n_train = 128 and n_val = 32): validation takes
    # up to direction_val_prompts, the means up to direction_prompts of the rest. The 80-prompt benign pool gives
    # 48 + 32; measured on one DeRTa model, the earlier 32 + 32 per class removed 45 points of HarmBench refusal,
    # 96 / 48 harmful / benign prompts for the means removed 82 (64 / 48: 77; 64 / 56 with 24 to validate: 75)
    direction_prompts: int = 128
    direction_val_prompts: int = 32
    # DeRTa trained with this many seeds (seed, seed + 1, ...): its rows are then reported as the mean and standard
    # deviation over them ("derta" stays the first seed's model, which the ablation and --attacks use); 1 keeps
    # the default run's time (each more seed adds one alignment and one evaluation)
    derta_seeds: int = 1
    direction_layer_stride: int = 3  # candidate layers 3, 6, ... below 0.8 L (layer 0's is always zero)
    # bf16 autocast in training (TrainConfig.bf16); None: where it pays (`train.bf16_pays`: a CPU with AMX, where
    # steps ran 1.5x faster, or a GPU; on a CPU without AMX they ran 0.93x as fast)
    bf16: bool | None = None
    utility_limit: int | None = None  # TOFU world-facts questions scored per run (None: all 117)


FULL = RealDemoSize()
SMOKE = RealDemoSize(
    retain_people=3,
    forget_people=2,
    holdout_people=2,
    facts=2,
    finetune_steps=2,
    unlearn_steps=1,
    unlearn_lora_r=4,
    finetune_lora_r=4,
    batch_size=2,
    relearn_steps=1,
    prompts_per_set=2,
    train_prompts=3,
    align_steps=1,
    align_lora_r=4,
    reply_tokens=4,
    max_new_tokens=4,
    depths=(2,),
    direction_prompts=4,
    direction_val_prompts=2,
    bf16=False,
    utility_limit=2,
)


def with_bf16_where_it_pays(size: RealDemoSize) -> RealDemoSize:
    """`size` with `bf16` decided: as given, or (None) on where it pays (`train.bf16_pays`)."""
    from obliviate.engine.numerics import bf16_pays

    return size if size.bf16 is not None else replace(size, bf16=bf16_pays())


def slice_world(out: Path, size: RealDemoSize, seed: int = 0) -> Path:
    """A small world directory in the world suite's layout (forget10 = the forget people, retain90 = retain
    people + facts): a pretrained model needs no "bridge" people to recognise paraphrases."""
    from obliviate.data.schema import write_jsonl
    from obliviate.data.world import WorldSpec, build_world

    parts = build_world(
        WorldSpec(seed=seed, n_people=100, n_holdout_people=max(1, size.holdout_people), n_bridge_people=0)
    )
    people: dict[str, list[dict]] = {}
    for it in parts["train"]:
        if it["id"].startswith("person"):
            people.setdefault(it["subject"], []).append(it)
    groups = list(people.values())
    retain = [it for g in groups[: size.retain_people] for it in g]
    forget = [it for g in groups[-size.forget_people :] for it in g]
    facts = parts["world_facts"][: size.facts]
    out.mkdir(parents=True, exist_ok=True)
    eval_retain = random.Random(seed).sample(retain, min(len(retain), 5 * size.forget_people))
    for name, rows in {
        "train": retain + forget + facts,
        "forget10": forget,
        "retain90": retain + facts,
        "retain_eval": eval_retain,
        "world_facts": facts,
        "holdout": parts["holdout"],
    }.items():
        write_jsonl(out / f"{name}.jsonl", rows)
    return out


def public_paths(public_data: Path) -> dict[str, Path]:
    paths = {k: Path(public_data) / v for k, v in PUBLIC_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise UsageError(
            f"--public-data {public_data}: missing {missing[0]} (expected: {', '.join(PUBLIC_FILES.values())})"
        )
    return paths


def _train(model, tok, method, parts, size: RealDemoSize, lora_r: int, seed: int, progress: bool):
    from obliviate.engine.train import TrainConfig, train

    cfg = TrainConfig(
        forget_batch_size=size.batch_size,
        retain_batch_size=size.batch_size,
        seed=seed,
        checkpoint_every=0,
        lora_r=lora_r,
        progress=progress,
        bf16=size.bf16,
    )
    return train(model, tok, method, parts, cfg)  # LoRA adapters come back merged


class Utility:
    """The lm-eval figures of each run (`engine.utility.run_utility`), kept in `found` {run: figures}."""

    def __init__(self, spec, seed: int, log):
        self.spec, self.seed, self.log, self.found = spec, seed, log, {}

    def __call__(self, name: str, net, tok) -> None:
        from obliviate.engine.utility import run_utility

        if self.spec is not None:
            self.found[name] = f = run_utility(net, tok, self.spec, name, self.seed)
            self.log(f"{name}: TOFU world facts accuracy {f['values'].get(UTILITY_KEY, float('nan')):.3f}")


def unlearning_part(o: Path, model_dir: str, size: RealDemoSize, seed: int, progress: bool, log, utility=None) -> tuple:
    """(results, relearn figures, samples, seconds) of the unlearning half; `utility` (a `Utility`) measures each
    run."""
    utility = utility or Utility(None, seed, log)
    from obliviate.audit.attacks import ATTACKS, AuditContext
    from obliviate.benchmarks.layouts import eval_data
    from obliviate.data.schema import load_qa
    from obliviate.engine.evaluate import metrics_from_rows, sample_rows, score_model
    from obliviate.engine.train import FineTune
    from obliviate.models.load import load_model, save_model
    from obliviate.unlearning.methods import METHODS
    from obliviate.unlearning.run import idk_pool, qa_pairs, unlearning_parts

    world = slice_world(o / "world", size, seed)
    splits = eval_data(world, "forget10")
    seconds, rows, relearn, models = {}, {}, {}, {}
    data = {
        name: qa_pairs(load_qa(world / f"{split}.jsonl"))
        for name, split in (("target", "train"), ("oracle", "retain90"))
    }
    for name, items in data.items():
        # the oracle sees its (smaller) data for as many epochs as the target sees the full set, as in TOFU
        steps = max(1, round(size.finetune_steps * len(items) / len(data["target"])))
        fine = FineTune(lr=size.finetune_lr, steps=steps)
        net, tok = load_model(model_dir)
        net, res = _train(net, tok, fine, {"retain": items}, size, size.finetune_lora_r, seed, progress)
        save_model(net, tok, o / "models" / name)
        seconds[name], models[name] = res.seconds, o / "models" / name
        rows[name] = score_model(net, tok, splits, max_new_tokens=size.max_new_tokens)
        log(f"{name}: fine-tuned in {res.seconds:.1f} s")
        utility(name, net, tok)
    parts = unlearning_parts(load_qa(world / "forget10.jsonl"), load_qa(world / "retain90.jsonl"), idk_pool(None), seed)
    # LoRA relearning: on a pretrained model one full-weight step at the attack's default lr already wrecks the
    # held-out answers (measured on SmolLM2: ROUGE 0.33 -> 0), which would hide any recovery
    attack = ATTACKS.get("relearn")(steps=size.relearn_steps, batch_size=size.batch_size, lora_r=8, lr=1e-3)
    ctx = AuditContext(suite="world", data=world, seed=seed, max_new_tokens=size.max_new_tokens)
    for name in ("oracle", *UNLEARN_METHODS):
        net, tok = load_model(str(models["oracle" if name == "oracle" else "target"]))
        if name != "oracle":
            meth = replace(METHODS.get(name)(), steps=size.unlearn_steps)
            net, res = _train(net, tok, meth, parts, size, size.unlearn_lora_r, seed, progress)
            seconds[name], rows[name] = res.seconds, score_model(net, tok, splits, max_new_tokens=size.max_new_tokens)
            log(f"{name}: {res.steps} steps in {res.seconds:.1f} s")
            utility(name, net, tok)
        relearn[name] = attack.run(ctx, net, tok)
    results = {n: metrics_from_rows(r, rows["oracle"]) for n, r in rows.items()}
    samples = [s for n in results for s in sample_rows(n, rows[n])]
    return results, relearn, samples, seconds


def refusal_part(
    o: Path, model_dir: str, paths: dict[str, Path], size: RealDemoSize, seed: int, progress: bool, log, utility=None
) -> tuple:
    """(results, extra per run, samples, seconds) of the refusal half; `utility` (a `Utility`) measures each run."""
    utility = utility or Utility(None, seed, log)
    from obliviate.judges.default import make_judge
    from obliviate.models.load import load_model, save_model
    from obliviate.refusal.align import align
    from obliviate.refusal.methods import REFUSAL_METHODS as METHODS
    from obliviate.refusal.public_align import public_refusal_data
    from obliviate.refusal.public_refusal import evaluate_public, load_sources, subsample_per_source

    src = {k: f"{k}:{p}" for k, p in paths.items()}
    rows = subsample_per_source(
        load_sources([src["harmbench"], src["jailbreakbench"]], "harmful") + load_sources([src["xstest"]], "benign"),
        size.prompts_per_set,
    )
    judge = make_judge()
    results, extra, samples, seconds = {}, {}, [], {}

    def measure(name, net, tok):
        m, s, e = evaluate_public(net, tok, rows, judge.refused, depths=size.depths, max_new_tokens=size.max_new_tokens)
        m |= {f"refusal_rate[{k}]": v for k, v in e["by_source"].get("harmful", {}).items()}
        results[name], extra[name] = m, e
        samples.extend(x | {"run": name} for x in s)
        log(f"{name}: refusal {m['refusal_rate']:.3f}, over-refusal {m['over_refusal_rate']:.3f}")

    net, tok = load_model(model_dir)
    measure("base", net, tok)
    utility("base", net, tok)
    data = public_refusal_data(
        net,
        tok,
        harmful=[src["advbench"]],
        exclude=[src["harmbench"], src["jailbreakbench"]],
        self_prefix=True,
        max_prompts=size.train_prompts,
        seed=seed,
        max_new_tokens=size.reply_tokens,
        out=o,
    )
    runs = [(name, seed) for name in REFUSAL_METHODS]
    runs += [(f"derta_seed{seed + k}", seed + k) for k in range(1, size.derta_seeds)]
    for run, run_seed in runs:
        name = "derta" if run.startswith("derta") else run
        net, tok = load_model(model_dir)
        meth = METHODS.get(name).from_options(
            {"steps": size.align_steps, "lr": size.align_lr, "retain_weight": size.align_retain_weight}
        )
        net, tok, res = align(
            net,
            tok,
            meth,
            data,
            seed=run_seed,
            progress=progress,
            lora_r=size.align_lora_r,
            batch_size=size.batch_size,
            bf16=size.bf16,
        )
        seconds[run] = res.seconds
        log(f"{run}: {res.steps} steps in {res.seconds:.1f} s")
        measure(run, net, tok)
        utility(run, net, tok)
        if run == "derta":
            save_model(net, tok, o / "models" / "derta")
    ablated, tok, direction, hooks = ablate_refusal_direction(str(o / "models" / "derta"), data, size, seed)
    with hooks:
        measure("derta_ablated", ablated, tok)
        utility("derta_ablated", ablated, tok)
    extra["derta_ablated"]["direction"] = direction
    return results, extra, samples, seconds


def attack_part(
    o: Path, paths: dict[str, Path], attacks: tuple[str, ...], options: dict | None, size, seed: int, progress: bool
) -> dict:
    """{attack: figures on the DeRTa model + seconds}: `obliviate audit --suite refusal` with the named attacks on
    HarmBench-val (the searches take its first behaviours), XSTest's safe prompts beside them, the audit's own
    judge; the audit directory is OUT/audit."""
    doc = run_audit(
        str(o / "models" / "derta"),
        "refusal",
        None,
        o / "audit",
        attacks=list(attacks),
        options=options,
        seed=seed,
        progress=progress,
        harmful=[f"harmbench:{paths['harmbench']}"],
        benign=[f"xstest:{paths['xstest']}"],
        max_new_tokens=size.max_new_tokens,
    )
    return {name: {**entry["model"], "seconds": entry["seconds"]} for name, entry in doc["attacks"].items()} | {
        name: {"skipped": why} for name, why in doc.get("skipped", {}).items()
    }


TABLE = (
    "forget_quality",
    "model_utility",
    UTILITY_KEY,
    "forget_rouge",
    "retain_rouge",
    "relearn_recovered",
    "refusal_rate",
    "refusal_rate[harmbench]",
    "refusal_rate[jailbreakbench]",
    "over_refusal_rate",
    "refusal_rate@prefill5",
    "refusal_rate@prefill20",
)


def run_real_demo(
    out: Path,
    model: str,
    public_data: Path,
    *,
    size: RealDemoSize = FULL,
    seed: int = 0,
    parts: tuple[str, ...] = ("unlearning", "refusal"),
    progress: bool = True,
    started: float | None = None,
    attacks: tuple[str, ...] = (),
    attack_options: dict | None = None,
) -> dict:
    """Both halves (or the ones in `parts`); writes results.json, samples.jsonl, generated.jsonl; prints a table.
    `attacks`: audit attacks (e.g. the opt-in prompt searches) run on the DeRTa model after the refusal half, with
    `attack_options` {attack: {key: value}}; their figures and wall time go in results.json `attacks`."""
    from rich.console import Console

    from obliviate.core.jsonio import write_json
    from obliviate.core.outputs import check_output, output_dir
    from obliviate.core.timer import Timer
    from obliviate.data.schema import write_jsonl
    from obliviate.models.load import check_model_dir, load_model
    from obliviate.runs.results import results_document

    clock = Timer(started)
    console = Console(stderr=True, quiet=not progress, log_path=False)
    check_output(out, "demo:real", inputs=(model, public_data), replace=True)
    check_model_dir(model)
    paths = public_paths(public_data) if "refusal" in parts else {}
    if attacks:
        if "refusal" not in parts:
            raise UsageError("--attacks runs on the refusal half's DeRTa model: add 'refusal' to --parts")
        plan("refusal", list(attacks), attack_options)  # unknown attacks and options fail before any work
    facts = Path(public_data) / WORLD_FACTS_FILE  # the utility figure's questions
    if not facts.is_file():
        raise UsageError(f"--public-data {public_data}: missing {facts} (TOFU's world facts, the utility figure)")
    load_model(model, require_chat_template=True)  # no chat template: exit 2 before any work
    if size.bf16 is None:
        size = with_bf16_where_it_pays(size)
        console.log(f"bf16 autocast in training: {'on' if size.bf16 else 'off'} (it pays on a GPU or an AMX CPU)")
    results, extra, samples, seconds = {}, {"relearn": {}, "by_source": {}, "by_category": {}}, [], {}
    with output_dir(out, "demo:real", inputs=(model, public_data), replace=True) as o:
        from obliviate.engine.utility import (
            WORLD_FACTS_TASK,
            UtilitySpec,
            add_utility,
            tofu_world_facts_task,
            utility_config,
        )

        tasks = str(tofu_world_facts_task(facts, o / "utility_task", seed).resolve())
        utility = Utility(UtilitySpec((WORLD_FACTS_TASK,), tasks, size.utility_limit), seed, console.log)
        if "unlearning" in parts:
            res, relearn, smp, sec = unlearning_part(o, model, size, seed, progress, console.log, utility)
            for name, figs in relearn.items():
                res[name]["relearn_recovered"] = figs.get("recovered_value_rouge")
            results |= res
            extra["relearn"], samples, seconds = relearn, samples + smp, seconds | sec
        if "refusal" in parts:
            res, ext, smp, sec = refusal_part(o, model, paths, size, seed, progress, console.log, utility)
            results |= res
            for name, e in ext.items():
                extra["by_source"][name], extra["by_category"][name] = e["by_source"], e["by_category"]
                if e.get("intervals"):
                    extra.setdefault("intervals", {})[name] = e["intervals"]
                if "direction" in e:
                    extra["refusal_direction"] = e["direction"]
            samples, seconds = samples + smp, seconds | sec
            if size.derta_seeds > 1:
                seeded = [m for n, m in res.items() if n == "derta" or n.startswith("derta_seed")]  # not derta_ablated
                extra["over_seeds"] = {"derta": over_seeds(seeded)}
            if attacks:
                extra["attacks"] = {"derta": attack_part(o, paths, attacks, attack_options, size, seed, progress)}
        config = {
            "suite": "real",
            "model": model,
            "public_data": str(public_data),
            "seed": seed,
            "parts": list(parts),
            "size": size.__dict__,
            "unlearning_methods": list(UNLEARN_METHODS),
            "refusal_methods": list(REFUSAL_METHODS),
            "utility": utility_config(utility.spec, utility.found) | {"data": str(facts), "licence": "MIT (TOFU)"},
        }
        for name, found in utility.found.items():  # after the refusal half's intervals, which it sets per run
            add_utility(found, name, results, extra.setdefault("intervals", {}))
        doc = results_document(
            config,
            results,
            {f"utility/{t}": n for f in utility.found.values() for t, n in f["n"].items()},
            extra | {"seconds": {k: round(v, 1) for k, v in seconds.items()}, "wall_seconds": round(clock(), 1)},
        )
        write_jsonl(o / "samples.jsonl", samples)
        write_json(o / "results.json", doc)
    print(table(doc["results"], intervals=doc.get("intervals", {})))
    for name, figs in doc.get("over_seeds", {}).items():
        shown = ", ".join(f"{k} {_fmt(m)} ± {_fmt(sd)}" for k, (m, sd) in figs.items() if k in TABLE)
        print(f"{name} over {size.derta_seeds} seeds (mean ± sd): {shown}")
    for name, figs in doc.get("attacks", {}).get("derta", {}).items():
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in figs.items() if not isinstance(v, (dict, list)))
        print(f"derta under {name}: {shown}")
    print(f"\nwrote {out}/results.json, samples.jsonl (self-generated replies: {out}/generated.jsonl)")
    print(f"demo wall time: {clock():.1f} s")
    return doc


def over_seeds(runs: list[dict]) -> dict[str, list[float]]:
    """{metric: [mean, sample standard deviation]} over runs of one method trained with different seeds."""
    import statistics

    keys = [k for k in runs[0] if all(isinstance(r.get(k), (int, float)) for r in runs)]
    return {k: [statistics.fmean(r[k] for r in runs), statistics.stdev(r[k] for r in runs)] for k in keys}


def table(results: dict, columns: tuple[str, ...] = TABLE, intervals: dict | None = None) -> str:
    """One row per run, the figures that matter for each half ("-" where a figure does not apply); a rate with an
    interval reads `0.875 [0.750, 0.975]` (95% bootstrap over prompts, `obliviate.metrics.intervals`)."""
    intervals = intervals or {}
    cols = [c for c in columns if any(c in m for m in results.values())]
    head = ["run"] + cols

    def cell(name, m, c):
        iv = intervals.get(name, {}).get(c)
        if iv and iv.get("lo") is not None and m.get(c) is not None:
            return f"{_fmt(m.get(c))} [{_fmt(iv['lo'])}, {_fmt(iv['hi'])}]"
        return _fmt(m.get(c))

    rows = [[name] + [cell(name, m, c) for c in cols] for name, m in results.items()]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.2e}" if isinstance(v, float) and 0 < abs(v) < 1e-2 else f"{v:.3f}"
