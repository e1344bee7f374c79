"""The text-to-image runners as the commands run them: `erase` (one eraser, a model directory out),
`eval --suite diffusion` (UA / IRA / CRA / over-erasure / classifier FD of named models, results.json out) and
`audit --suite diffusion` (pre-ASR and ASR of each attack on an erased model, audit.json out). They are also the
Python API (`obliviate.erase`). Every input is checked before a model loads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from obliviate.core.errors import UsageError
from obliviate.core.jsonio import write_json
from obliviate.core.outputs import check_output, output_dir

if TYPE_CHECKING:
    from obliviate.diffusion.model import T2I


@dataclass
class Erased:
    """What `erase` returns: the edited model (in memory), where it was saved, and the seconds erasing and saving
    took."""

    model: T2I
    out: Path
    seconds: float
    scores: list[dict] | None = None  # with `data`: the score rows (`diffusion.requests`), before and after


def erase(
    method: str,
    model: str | Path,
    concept: str | Sequence[str],
    out: Path,
    *,
    guide: str = "",
    preserve: Sequence[str] = (),
    options: dict | None = None,
    sequential: bool = False,
    data: Path | None = None,
    classifiers: Path | None = None,
    limit: int | None = 24,
    ddim_steps: int = 25,
    guidance: float = 2.0,
    log: Callable[[str], Any] = lambda s: None,
) -> Erased:
    """Erase `concept` (or several) from a text-to-image model with one eraser: what `obliviate erase` runs, and
    `obliviate.erase`.

    Args:
        method: an eraser (`obliviate ls erasers`: esd_x, uce, concept_ablation, ...); `options` its options,
            e.g. {"steps": 60}.
        model: a diffusers text-to-image directory (unet/, text_encoder/, tokenizer/, scheduler/).
        concept: the concept to erase, in the model's words (e.g. "star"), or a list of them (UCE edits them in
            one closed form, the others erase them one after another: `diffusion.requests`); every word must be
            known to its tokenizer, as must those of `guide` (what the concept should turn into; default the empty
            prompt) and of each `preserve` concept (kept as it was).
        out: the edited model's directory (new; the input model is left as it was).
        data: an image world (with classifiers, or `classifiers`): the erased model is then scored on it
            (`diffusion.requests.score_erased`: UA per concept, IRA, CRA; `limit` prompts per set, `ddim_steps`,
            `guidance`) into OUT/requests.json; with `sequential`, the concepts are separate requests applied
            one after another and the model is scored before and after each, as UnlearnCanvas does.

    Writes OUT in the input's layout (staged: a half-written model never appears). Returns `Erased` (the edited
    model, OUT, the seconds erasing and saving took, and the score rows when `data` was given)."""
    from obliviate.diffusion.erasers import ERASERS, Eraser, load_all
    from obliviate.diffusion.evaluate import SampleConfig
    from obliviate.diffusion.model import load_t2i, unknown_words
    from obliviate.diffusion.requests import check_concepts, score_erased
    from obliviate.diffusion.requests import sequential as run_sequential

    concepts = check_concepts([concept] if isinstance(concept, str) else list(concept))
    if sequential and data is None:
        raise UsageError("--sequential scores the model after each request: give --data (an image world)")
    check_sampling(ddim_steps, guidance)
    read = (model, data, classifiers)
    check_output(out, "erase", inputs=read)  # before anything is loaded
    load_all()
    eraser = ERASERS.get(method).from_options(options or {})
    world = clf = None
    if data is not None:
        from obliviate.diffusion.world import factor_of

        world, clf = world_and_classifiers(data, classifiers)
        for c in concepts:
            factor_of(world, c)  # a concept the world does not know: exit 2 with the closest
    t2i = load_t2i(model)
    for text in [*concepts, guide, *preserve]:
        missing = unknown_words(t2i.tokenizer, text)
        if missing:
            import difflib

            vocab = [w for w in t2i.tokenizer.get_vocab() if w not in t2i.tokenizer.all_special_tokens]
            close = difflib.get_close_matches(missing[0], vocab, n=1, cutoff=0.5)
            raise UsageError(
                f"the model's tokenizer does not know {missing[0]!r} (in {text!r})"
                + (f"; did you mean {close[0]!r}?" if close else "")
            )
    sample = SampleConfig(steps=ddim_steps, guidance=guidance, max_prompts=limit)
    t0, rows = time.perf_counter(), None
    if sequential:
        edited, rows = run_sequential(
            eraser, t2i, concepts, clf, world, sample, guide=guide, preserve=preserve, log=log
        )
    else:
        edited = eraser.erase_many(t2i, concepts, guide=guide, preserve=tuple(preserve))
        seconds = round(time.perf_counter() - t0, 1)
        if data is not None:
            rows = [
                {"request": 0, "concept": None, "seconds": 0.0, **score_erased(t2i, clf, world, concepts, sample)},
                {"request": len(concepts), "concept": "+".join(concepts), "seconds": seconds}
                | score_erased(edited, clf, world, concepts, sample),
            ]
    seconds = time.perf_counter() - t0
    with output_dir(out, "erase", inputs=read, staged=True) as o:
        edited.save(o)
        if rows is not None:
            write_json(
                o / "requests.json",
                {
                    "method": method,
                    "concepts": concepts,
                    "sequential": sequential,
                    "joint": type(eraser).erase_many is not Eraser.erase_many,
                    "sample": dict(sample.__dict__),
                    "rows": rows,
                },
            )
    return Erased(edited, Path(out), seconds, rows)


def _guard(spec: str | None):
    """The `--guard` of the diffusion suite, parsed (None without one)."""
    from obliviate.diffusion.guard import parse_guard

    return parse_guard(spec) if spec else None


def check_sampling(ddim_steps: int | None, guidance: float | None) -> None:
    """--ddim-steps >= 1 and --guidance > 0 where given."""
    if ddim_steps is not None and ddim_steps < 1:
        raise UsageError(f"--ddim-steps must be >= 1 (got {ddim_steps})")
    if guidance is not None and not guidance > 0:
        raise UsageError(f"--guidance must be > 0 (got {guidance})")


def world_and_classifiers(data: Path, classifiers: Path | None):
    """(image world, factor classifiers): the classifiers from `classifiers`, by default DATA/classifiers."""
    from obliviate.diffusion.classifiers import FactorClassifiers
    from obliviate.diffusion.world import load_image_world

    world = load_image_world(data)
    clf_dir = classifiers or Path(data) / "classifiers"
    if not (Path(clf_dir) / "classifiers.json").is_file():
        raise UsageError(
            f"no factor classifiers in {clf_dir}: write the world with `obliviate world --images "
            f"--classifiers`, or give --classifiers DIR"
        )
    return world, FactorClassifiers.load(clf_dir)


def run_diffusion_eval(
    models: dict[str, str],
    data: Path,
    concept: str | None,
    classifiers: Path | None,
    out: Path,
    *,
    ddim_steps: int = 25,
    guidance: float = 2.0,
    limit: int | None = None,
    seed: int = 0,
    guard: str | None = None,
) -> dict:
    """`eval --suite diffusion`: UA / IRA / CRA / over-erasure / classifier FD of each model ({name: diffusers
    directory}) for one concept, on an image world `data` scored by its factor classifiers (`classifiers`, by
    default DATA/classifiers). `limit`: at most N prompts per prompt set. `guard` ("gog" or "gog:MAPPING.json",
    `diffusion.guard`): each model is also scored guarded against the concept, as NAME+gog.

    Writes OUT/results.json (the results schema) and OUT/grids/NAME.png (target and unrelated samples per model).
    Returns the results.json document."""
    from obliviate.diffusion.evaluate import SampleConfig, evaluate_concept, save_grid
    from obliviate.diffusion.model import load_t2i
    from obliviate.diffusion.world import factor_of
    from obliviate.runs.results import results_document

    check_sampling(ddim_steps, guidance)
    read = (*models.values(), data, classifiers)
    check_output(out, "eval", inputs=read)
    if not concept:
        raise UsageError("--suite diffusion needs --concept WORD (e.g. star)")
    world, clf = world_and_classifiers(data, classifiers)
    factor_of(world, concept)  # an unknown concept: exit 2 with a suggestion, before any model loads
    gog = _guard(guard)
    loaded = [(name, load_t2i(d)) for name, d in models.items()]
    if gog is not None:
        loaded += [(f"{name}+gog", gog.guard(t2i, [concept], world)) for name, t2i in loaded]
    cfg = SampleConfig(steps=ddim_steps, guidance=guidance, seed=seed, max_prompts=limit)
    results = {}
    with output_dir(out, "eval", inputs=read) as o:
        for name, t2i in loaded:
            m, art = evaluate_concept(t2i, clf, world, concept, cfg)
            results[name] = m
            save_grid(
                [art["images"]["target"], art["images"]["others"][: len(art["images"]["target"])]],
                o / "grids" / f"{name}.png",
            )
        doc = results_document(
            {
                "suite": "diffusion",
                "concept": concept,
                "models": dict(models),
                "data": str(data),
                "guard": guard,
                "sample": cfg.__dict__,
            },
            results,
            {},
        )
        write_json(o / "results.json", doc)
    return doc


def run_diffusion_audit(
    model: str,
    target: str | None,
    data: Path,
    concept: str | None,
    classifiers: Path | None,
    out: Path,
    attacks: list[str] | None,
    options: dict[str, dict],
    *,
    prompts: int = 4,
    ddim_steps: int = 25,
    guidance: float = 2.0,
    time_budget: float | None = None,
    seed: int = 0,
    guard: str | None = None,
    log: Callable[[str], Any] = lambda s: None,
) -> dict:
    """`audit --suite diffusion`: pre-ASR and ASR of each attack (default: every one; `options` {attack: {key:
    value}}) on an erased model `model` against the original `target`, for one concept, on `prompts` target
    prompts of the image world `data`; with `guard` ("gog" or "gog:MAPPING.json") on `model` guarded against the
    concept, so the guard meets the same attacks as the erasers. `log` receives each attack's progress lines.

    Writes OUT/audit.json ({"pre_asr", "attacks": {attack: {"asr", ...}}, config, model, target, data}). Returns
    that document."""
    from obliviate.diffusion.attacks import DIFFUSION_ATTACKS, load_all
    from obliviate.diffusion.audit import DiffusionAuditConfig, audit_concept
    from obliviate.diffusion.evaluate import SampleConfig
    from obliviate.diffusion.model import load_t2i
    from obliviate.diffusion.world import factor_of

    check_sampling(ddim_steps, guidance)
    read = (model, target, data, classifiers)
    check_output(out, "audit", inputs=read)
    if not concept:
        raise UsageError("--suite diffusion needs --concept WORD (the erased concept)")
    if not target:
        raise UsageError(
            "--suite diffusion needs --target DIR: the model before erasure (the attacks aim at its images)"
        )
    load_all()
    names = attacks or DIFFUSION_ATTACKS.names()
    for a in names:
        DIFFUSION_ATTACKS.get(a)
    world, clf = world_and_classifiers(data, classifiers)
    factor_of(world, concept)
    gog = _guard(guard)
    erased, original = load_t2i(model), load_t2i(target)
    if gog is not None:
        erased = gog.guard(erased, [concept], world)
    cfg = DiffusionAuditConfig(
        prompts=prompts,
        sample=SampleConfig(steps=ddim_steps, guidance=guidance, seed=seed),
        options=options,
        time_budget=time_budget,
    )
    with output_dir(out, "audit", inputs=read) as o:
        doc = audit_concept(erased, original, clf, world, concept, names, cfg, log=log, out_dir=o)
        doc |= {
            "model": model,
            "target": target,
            "data": str(data),
            "sample": dict(cfg.sample.__dict__),
            "guard": guard,
        }
        write_json(o / "audit.json", doc)
    return doc


def run_diffusion_replay(
    model: str,
    replay: Path,
    data: Path,
    concept: str | None,
    classifiers: Path | None,
    out: Path,
    *,
    ddim_steps: int | None = None,
    guidance: float | None = None,
    guard: str | None = None,
    log: Callable[[str], Any] = lambda s: None,
) -> dict:
    """`audit --suite diffusion --replay DIR` (with `guard`: on `model` guarded, as in `run_diffusion_audit`): the findings an earlier audit (DIR) kept, run on `model`; the
    transfer ASR per attack (`diffusion.findings.replay`). The concept, and unless given the DDIM steps and
    guidance, are DIR's. Writes OUT/audit.json ({"replay": DIR, "pre_asr" of `model` on DIR's prompts,
    "attacks": {attack: {"asr" = "transfer_asr", "replayed"}}}) and OUT/findings/ (the replayed findings with
    `model`'s images). Returns that document."""
    from obliviate.data.schema import read_json
    from obliviate.diffusion.evaluate import SampleConfig, generate
    from obliviate.diffusion.findings import read_findings, write_findings
    from obliviate.diffusion.findings import replay as replay_findings
    from obliviate.diffusion.model import load_t2i
    from obliviate.diffusion.world import factor_of

    check_sampling(ddim_steps, guidance)
    read = (model, data, classifiers, replay)
    check_output(out, "audit", inputs=read)
    found = read_findings(replay)  # a directory without findings: exit 2 before any model loads
    src_file = Path(replay) / "audit.json"
    src = read_json(src_file) if src_file.is_file() else {}
    if concept and src.get("concept") and concept != src["concept"]:
        raise UsageError(f"{replay}: its findings are for {src['concept']!r}, not {concept!r}")
    concept = concept or src.get("concept")
    if not concept:
        raise UsageError(f"{replay}: no audit.json naming the concept; give --concept WORD")
    world, clf = world_and_classifiers(data, classifiers)
    factor = factor_of(world, concept)
    want = clf.values[factor].index(concept)
    given = src.get("sample") or {}
    sample = SampleConfig(
        steps=ddim_steps or given.get("steps", 25),
        guidance=guidance or given.get("guidance", 2.0),
        seed=given.get("seed", 0),
    )

    def recognised(images) -> list[bool]:
        return (clf.predict(images)[factor] == want).tolist() if len(images) else []

    t2i = load_t2i(model)
    if guard:
        t2i = _guard(guard).guard(t2i, [concept], world)
    # the prompts the findings were made for (DIR's audit.json lists them; else the per-prompt findings name them)
    texts = src.get("prompts") or list(
        dict.fromkeys(r["prompt"] for rs in found.values() for r in rs if not r.get("terms"))
    )
    pre = recognised(generate(t2i, texts, sample)) if texts else []
    with output_dir(out, "audit", inputs=read) as o:
        replayed = replay_findings(t2i, Path(replay), found, recognised, sample, log=log)
        attacks = {}
        for name, r in replayed.items():
            d = write_findings(o, name, r["records"], {})
            attacks[name] = {
                "asr": r["transfer_asr"],
                "transfer_asr": r["transfer_asr"],
                "replayed": r["replayed"],
                "findings": str(d.relative_to(o)),
            }
        doc = {
            "concept": concept,
            "factor": factor,
            "prompts": texts,
            "pre_asr": sum(pre) / len(pre) if pre else float("nan"),
            "attacks": attacks,
            "skipped": {},
            "replay": str(replay),
            "replayed_from": src.get("model"),
            "model": model,
            "data": str(data),
            "sample": dict(sample.__dict__),
            "guard": guard,
        }
        write_json(o / "audit.json", doc)
    return doc
