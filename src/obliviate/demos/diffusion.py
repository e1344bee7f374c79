"""`obliviate demo --suite diffusion`: concept erasure in a text-to-image model, end to end, on the image world.

    image world (+ factor classifiers) -> base model trained from config -> every eraser on one object, one colour
    and one style -> UA / IRA / CRA / over-erasure / classifier FD per (eraser, concept) -> attacks on the object's
    erasures (pre-ASR, ASR) -> results.json, samples grids, one printed table.

Sizes: `FULL` is the demo, `SMOKE` the tests' run of the same path. Each eraser runs with its own defaults except
`steps` and `ddim_steps` (`eraser_steps`, `eraser_ddim_steps`) for the trained ones, so that every eraser fits the
demo's budget, and `eraser_options` over those. The (eraser, concept) jobs run in two single-thread workers
(`--workers`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from obliviate.diffusion.evaluate import SampleConfig


@dataclass(frozen=True)
class DiffusionDemoSize:
    # base model training: a fixed step count, so that the same seed gives the same base model on any host (a
    # wall-clock cap stopped a slow host at 1,383 steps, and every figure moved). The learning rate holds at
    # `train_lr`, then falls linearly to zero over the last `train_cooldown` of the steps, and the EMA keeps ~200
    # steps (`train_ema`): 1,600 such steps draw as well as 1,800 at a constant rate with a 0.999 EMA, whose average
    # lagged ~1,000 steps behind (docs/benchmarks.md, the text-to-image base model)
    train_steps: int = 1600
    train_batch_size: int = 64
    train_lr: float = 2e-3
    train_cooldown: float = 0.4
    train_ema: float = 0.995
    channels: tuple[int, ...] = (32, 64)
    classifier_steps: int = 600
    concepts: tuple[str, ...] = ("star", "red", "striped")  # one object, one colour, one style
    erasers: tuple[str, ...] | None = None  # None: every registered eraser but the opt-in ones (`OPT_IN`)
    guards: tuple[str, ...] = ("gog",)  # inference-time guards on the base model, scored and attacked as the erasers
    # erasers run on the first concept only (the object, the attacked one) unless named with --methods: AdvUnlearn
    # as its reference runs it took 107-152 s per concept, and the colour and style runs would push the demo past
    # its 20 minutes (docs/benchmarks.md, the text-to-image demo)
    first_concept_only: tuple[str, ...] = ("advunlearn",)
    eraser_steps: int = 60  # `steps` of the trained erasers
    eraser_ddim_steps: int = 10  # their DDIM steps to reach x_t each step (default 25): most of an ESD step's cost
    # per-eraser options over the above, from a sweep on the demo's base model (docs/benchmarks.md): ESD-x needs more steps to
    # pass UA 0.8, UCE a smaller lambda, AdvUnlearn's text encoder a larger learning rate than its SD default
    eraser_options: dict = field(
        default_factory=lambda: {
            "esd_x": {"steps": 150},
            "uce": {"lam": 0.3},
            # 10 of its reference's 30 inner-attack steps: at 30, AdvUnlearn took ~190 s per concept, most of the
            # demo's budget (bench/diffusion_robustness.py runs the reference's 30)
            "advunlearn": {"lr": 3e-4, "attack_steps": 10},
        }
    )
    # evaluation: 12 DDIM steps at guidance 3 (the base model's factor accuracy at 10, 12, 15 and 20 steps moved by
    # at most 0.05, in both directions: docs/benchmarks.md), at most 24 prompts per set
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(steps=12, guidance=3.0, max_prompts=24))
    attacks: tuple[str, ...] = ("unlearndiffatk", "p4d", "embedding_shift", "concept_arithmetic")
    attack_prompts: int = 4
    # UnlearnDiffAtk at its defaults (the reference code's 50 timesteps); P4D and the embedding shift at 20 steps for
    # time; concept arithmetic samples at the demo's 12 DDIM steps (its default: 25)
    attack_options: dict = field(
        default_factory=lambda: {
            "p4d": {"steps": 20},
            "embedding_shift": {"steps": 20},
            "concept_arithmetic": {"steps": 12},
        }
    )
    per_combination: int = 8

    def train_recipe(self, seed: int) -> dict:
        """`train_t2i`'s keyword arguments for the base model (the demo's and the robustness bench's)."""
        return {
            "steps": self.train_steps,
            "batch_size": self.train_batch_size,
            "lr": self.train_lr,
            "cooldown": self.train_cooldown,
            "ema": self.train_ema,
            "seed": seed,
        }


# erasers the demo runs only when named (`demo --suite diffusion --methods ...,sfd`): SFD distils a one-step
# generator, several minutes per concept on this CPU, past the demo's 20-minute budget
OPT_IN = ("sfd",)
FULL = DiffusionDemoSize()
SMOKE = DiffusionDemoSize(
    train_steps=8,
    classifier_steps=20,
    concepts=("star",),
    erasers=("uce", "esd_x"),
    guards=(),
    eraser_steps=2,
    eraser_ddim_steps=2,
    eraser_options={"esd_x": {"steps": 3}},
    sample=SampleConfig(steps=2, guidance=2.0, max_prompts=4),
    attacks=("unlearndiffatk", "concept_arithmetic"),
    attack_prompts=1,
    attack_options={"unlearndiffatk": {"steps": 2}},
    channels=(16, 32),
    per_combination=2,
)

TABLE = (
    "ua",
    "ira",
    "cra",
    "over_erasure",
    "over_erasure[look-alike]",
    "over_erasure[word-alike]",
    "fd_classifier",
    "pre_asr",
    "asr[unlearndiffatk]",
    "asr[p4d]",
    "asr[embedding_shift]",
    "asr[concept_arithmetic]",
    "seconds",
)


def run_diffusion_demo(
    out: Path,
    *,
    size: DiffusionDemoSize = FULL,
    seed: int = 0,
    progress: bool = True,
    started: float | None = None,
    workers: int | None = None,
) -> dict:
    from rich.console import Console

    from obliviate.core.jsonio import write_json
    from obliviate.core.outputs import output_dir
    from obliviate.core.pool import Workers
    from obliviate.core.timer import Timer
    from obliviate.data.schema import write_jsonl
    from obliviate.diffusion.classifiers import train_factor_classifiers
    from obliviate.diffusion.erasers import ERASERS, load_all
    from obliviate.diffusion.evaluate import base_accuracy, evaluate_concept, save_grid
    from obliviate.diffusion.model import T2IConfig, build_t2i, build_word_tokenizer, train_t2i
    from obliviate.diffusion.world import ImageWorldSpec, build_image_world, vocabulary, write_world_files
    from obliviate.runs.results import results_document

    clock = Timer(started)
    console = Console(stderr=True, quiet=not progress, log_path=False)
    load_all()
    erasers = list(size.erasers or [n for n in ERASERS.names() if n not in OPT_IN])
    for name in erasers:
        ERASERS.get(name)  # unknown names: did-you-mean before any work
    spec = ImageWorldSpec(seed=seed, per_combination=size.per_combination)
    results, extra = {}, {"audit": {}}
    with output_dir(out, "demo:diffusion", replace=True) as o:
        write_world_files(_mkdir(o / "world"), spec)
        world = build_image_world(spec)
        clf = train_factor_classifiers(spec, steps=size.classifier_steps, seed=seed)
        clf.save(o / "classifiers")
        console.log(
            "classifiers: fresh accuracy " + ", ".join(f"{f} {a:.3f}" for f, a in clf.meta["fresh_accuracy"].items())
        )
        train = [i for i, r in enumerate(world["labels"]) if r["split"] == "train"]
        tok = build_word_tokenizer(vocabulary(world))
        base = build_t2i(tok, T2IConfig(size=spec.size, channels=size.channels), seed=seed)
        images, captions = world["images"][train], [world["labels"][i]["captions"] for i in train]
        fit = train_t2i(base, images, captions, progress=progress, **size.train_recipe(seed))
        steps = fit["steps"]
        base.save(o / "models" / "base")
        acc = base_accuracy(base, clf, world, replace(size.sample, max_prompts=None))  # every world prompt
        extra["base"] = {"steps": steps, "train_seconds": round(fit["seconds"], 1), "factor_accuracy": acc}
        console.log(
            f"base model: {steps} steps in {fit['seconds']:.0f} s; factor accuracy "
            + ", ".join(f"{f} {a:.3f}" for f, a in acc.items())
        )
        before = {}
        for concept in size.concepts:
            results[f"base/{concept}"], art = evaluate_concept(base, clf, world, concept, size.sample)
            before[concept] = art["images"]["target"]
        # every (eraser, concept) is independent once the base model is saved: the attacked ones (the first
        # concept's, the longest) go first so that the two workers finish together
        jobs = [
            {
                "out": str(o),
                "spec": spec,
                "size": size,
                "seed": seed,
                "name": n,
                "concept": c,
                "attack": bool(size.attacks) and c == size.concepts[0],
            }
            for c in size.concepts
            for n in (*erasers, *size.guards)
            if c == size.concepts[0] or n not in size.first_concept_only
        ]
        samples, done = [], {}
        with Workers(workers) as pool:
            for run, m, aud, target_images, rows in pool.map(_erasure_job, jobs):
                done[run] = m
                if aud is not None:
                    extra["audit"][run] = aud
                save_grid([before[run.split("/", 1)[1]], target_images], o / "grids" / f"{run.replace('/', '_')}.png")
                samples += rows
                console.log(
                    f"{run}: UA {m['ua']:.2f} IRA {m['ira']:.2f} CRA {m['cra']:.2f} "
                    f"({m['seconds']:.0f} s erasing, {m['job_seconds']:.0f} s in all)"
                )
        results |= done  # in the jobs' order: concept by concept, erasers then guards
        config = {
            "suite": "diffusion",
            "seed": seed,
            "size": _plain(size.__dict__),
            "erasers": erasers,
            "workers": pool.n,
        }
        doc = results_document(config, results, {}, extra | {"wall_seconds": round(clock(), 1)})
        write_jsonl(o / "samples.jsonl", samples)
        write_json(o / "results.json", doc)
    print(table(results))
    print(f"\nwrote {out}/results.json, grids/ (before / after, per eraser and concept)")
    print(f"demo wall time: {clock():.1f} s")
    return doc


def _erasure_job(job: dict) -> tuple[str, dict, dict | None, object, list[dict]]:
    """One eraser on one concept, in a worker (or in-process): erase the saved base model, evaluate, and attack the
    erasure when `job["attack"]`. Returns (run, metrics, audit or None, the erased model's target images, sample
    rows)."""
    from obliviate.core.jsonio import write_json
    from obliviate.diffusion.audit import DiffusionAuditConfig, audit_concept
    from obliviate.diffusion.classifiers import FactorClassifiers
    from obliviate.diffusion.erasers import load_all
    from obliviate.diffusion.evaluate import evaluate_concept
    from obliviate.diffusion.guard import parse_guard
    from obliviate.diffusion.model import load_t2i
    from obliviate.diffusion.world import build_image_world

    load_all()  # a spawned worker starts with empty registries
    t0 = time.perf_counter()
    o, size, concept, name = Path(job["out"]), job["size"], job["concept"], job["name"]
    world = build_image_world(job["spec"])
    base, clf = load_t2i(o / "models" / "base"), FactorClassifiers.load(o / "classifiers")
    t_erase = time.perf_counter()
    if name in size.guards:  # the only guard: Guardians of Generation, on the base model's unchanged weights
        edited = parse_guard(name).guard(base, [concept], world)
    else:
        edited = demo_erase(
            name,
            base,
            world,
            concept,
            size.eraser_steps,
            job["seed"],
            size.eraser_ddim_steps,
            size.eraser_options.get(name),
        )
    secs = time.perf_counter() - t_erase
    m, art = evaluate_concept(edited, clf, world, concept, size.sample)
    m["seconds"] = round(secs, 1)
    run, aud = f"{name}/{concept}", None
    if job["attack"]:
        options = {a: dict(opts) for a, opts in size.attack_options.items() if a in size.attacks}
        cfg = DiffusionAuditConfig(prompts=size.attack_prompts, sample=size.sample, options=options)
        where = Path("audits") / f"{name}_{concept}"  # findings and their images, for the report and --replay
        aud = audit_concept(edited, base, clf, world, concept, list(size.attacks), cfg, out_dir=o / where)
        write_json(o / where / "audit.json", aud | {"model": name, "sample": dict(size.sample.__dict__)})  # --replay
        for r in aud["attacks"].values():
            if "findings" in r:
                r["findings"] = str(where / r["findings"])
        m["pre_asr"] = aud["pre_asr"]
        m |= {f"asr[{a}]": r["asr"] for a, r in aud["attacks"].items()}
    m["job_seconds"] = round(time.perf_counter() - t0, 1)
    samples = [{"run": run, "set": s, "prompt": r["text"]} for s, rows in art["rows"].items() for r in rows]
    return run, m, aud, art["images"]["target"], samples


def demo_erase(
    name: str,
    base,
    world: dict,
    concept: str,
    steps: int,
    seed: int = 0,
    ddim_steps: int | None = None,
    options: dict | None = None,
):
    """Eraser `name` on `concept`, as the demo runs every eraser: `steps` (and `ddim_steps` when given) where the
    eraser takes them, then `options` over them, and the concept's nearest look-alike (e.g. star -> cross) as the
    guide of an eraser that maps the concept onto another concept (`needs_anchor`: Concept Ablation's anchor, SalUn's
    relabelling)."""
    import torch

    from obliviate.diffusion.erasers import ERASERS
    from obliviate.diffusion.world import factor_of

    cls = ERASERS.get(name)
    opts = {
        k: v
        for k, v in (("steps", steps), ("ddim_steps", ddim_steps))
        if v is not None and k in cls.__dataclass_fields__
    } | dict(options or {})
    torch.manual_seed(seed)
    # an eraser that retains on prompts (AdvUnlearn's regulariser, SFD's remaining classes) gets the world's
    # prompts, as text only: the ones that do not name the concept
    factor = factor_of(world, concept)
    preserve = (
        tuple(r["text"] for r in world["prompts"] if r[factor] != concept)
        if getattr(cls, "retain_prompts", False)
        else ()
    )
    guide = (
        world["factors"]["look_alikes"][factor_of(world, concept)][concept][0]
        if getattr(cls, "needs_anchor", False)
        else ""
    )
    return cls(**opts).erase(base, concept, guide=guide, preserve=preserve)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _plain(d: dict) -> dict:
    return {k: (v.__dict__ if hasattr(v, "__dict__") else v) for k, v in d.items()}


def table(results: dict) -> str:
    from obliviate.demos.real import table as runs_table

    return runs_table(results, TABLE)
