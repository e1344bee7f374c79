"""`obliviate erase`: erase a concept from a text-to-image diffusion model (diffusers directory)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from obliviate.cli.common import parse_options, set_threads
from obliviate.core.errors import UsageError


def erase(method: str = typer.Argument(..., help="eraser name (`obliviate ls erasers`)"),
          model: Path = typer.Option(..., help="a diffusers text-to-image directory (unet/, text_encoder/, ...)"),
          concept: str = typer.Option(..., help="the concept to erase, in the model's words, e.g. 'star'"),
          out: Path = typer.Option(..., help="the edited model's directory"),
          guide: str = typer.Option("", help="what the concept should turn into (default: the empty prompt)"),
          preserve: List[str] = typer.Option([], help="a concept to keep as it was (repeatable)"),
          option: List[str] = typer.Option([], help="eraser option KEY=VALUE (repeatable)"),
          threads: Optional[int] = typer.Option(None)):
    """Erase CONCEPT with METHOD and save the edited model to OUT (same layout as the input)."""
    import time

    from obliviate.core.outputs import check_output, output_dir

    check_output(out, "erase", inputs=(model,))  # before anything is loaded
    from obliviate.diffusion.erasers import ERASERS, load_all
    from obliviate.diffusion.model import load_t2i, unknown_words

    load_all()
    eraser = ERASERS.get(method).from_options(parse_options(option))
    if not concept.strip():
        raise UsageError("--concept must not be empty")
    set_threads(threads)
    t2i = load_t2i(model)
    for text in [concept, guide, *preserve]:
        missing = unknown_words(t2i.tokenizer, text)
        if missing:
            raise UsageError(f"the model's tokenizer does not know {missing[0]!r} (in {text!r})")
    t0 = time.perf_counter()
    edited = eraser.erase(t2i, concept, guide=guide, preserve=tuple(preserve))
    with output_dir(out, "erase", inputs=(model,), staged=True) as o:
        edited.save(o)
    typer.echo(f"{method}: erased {concept!r} in {time.perf_counter() - t0:.1f} s; wrote {out}")


def _world_and_classifiers(data: Path, classifiers: Optional[Path]):
    from obliviate.diffusion.classifiers import FactorClassifiers
    from obliviate.diffusion.world import load_image_world

    world = load_image_world(data)
    clf_dir = classifiers or Path(data) / "classifiers"
    if not (Path(clf_dir) / "classifiers.json").is_file():
        raise UsageError(f"no factor classifiers in {clf_dir}: write the world with `obliviate world --images "
                         f"--classifiers`, or give --classifiers DIR")
    return world, FactorClassifiers.load(clf_dir)


def sampling(ddim_steps: Optional[int], guidance: Optional[float]) -> dict:
    """--ddim-steps / --guidance, checked, as keyword arguments of diffusion_eval / diffusion_audit (unset: theirs)."""
    if ddim_steps is not None and ddim_steps < 1:
        raise UsageError(f"--ddim-steps must be >= 1 (got {ddim_steps})")
    if guidance is not None and not guidance > 0:
        raise UsageError(f"--guidance must be > 0 (got {guidance})")
    return {k: v for k, v in (("ddim_steps", ddim_steps), ("guidance", guidance)) if v is not None}


def diffusion_eval(models: dict[str, str], data: Path, concept: Optional[str], classifiers: Optional[Path],
                   out: Path, *, ddim_steps: int = 25, guidance: float = 2.0, limit: Optional[int] = None,
                   seed: int = 0) -> dict:
    """`eval --suite diffusion`: UA / IRA / CRA / over-erasure / classifier FD of each model for one concept."""
    from obliviate.diffusion.evaluate import SampleConfig, evaluate_concept, save_grid
    from obliviate.diffusion.model import load_t2i
    from obliviate.diffusion.world import factor_of
    from obliviate.core.outputs import check_output, output_dir
    from obliviate.runs.results import results_document
    from obliviate.core.jsonio import write_json
    from obliviate.demos.diffusion import table

    read = (*models.values(), data, classifiers)
    check_output(out, "eval", inputs=read)
    if not concept:
        raise UsageError("--suite diffusion needs --concept WORD (e.g. star)")
    world, clf = _world_and_classifiers(data, classifiers)
    factor_of(world, concept)  # an unknown concept: exit 2 with a suggestion, before any model loads
    loaded = [(name, load_t2i(d)) for name, d in models.items()]
    cfg = SampleConfig(steps=ddim_steps, guidance=guidance, seed=seed, max_prompts=limit)
    results = {}
    with output_dir(out, "eval", inputs=read) as o:
        for name, t2i in loaded:
            m, art = evaluate_concept(t2i, clf, world, concept, cfg)
            results[name] = m
            save_grid([art["images"]["target"], art["images"]["others"][:len(art["images"]["target"])]],
                      o / "grids" / f"{name}.png")
        doc = results_document({"suite": "diffusion", "concept": concept, "models": dict(models),
                                "data": str(data), "sample": cfg.__dict__}, results, {})
        write_json(o / "results.json", doc)
    typer.echo(table(results))
    typer.echo(f"wrote {out}/results.json, grids/")
    return doc


def diffusion_audit(model: str, target: Optional[str], data: Path, concept: Optional[str],
                    classifiers: Optional[Path], out: Path, attacks: Optional[list[str]], options: dict, *,
                    prompts: int = 4, ddim_steps: int = 25, guidance: float = 2.0, time_budget=None,
                    seed: int = 0) -> dict:
    """`audit --suite diffusion`: pre-ASR and ASR of each attack on an erased model (MODEL) against the original
    (--target), for one concept."""
    from obliviate.diffusion.attacks import DIFFUSION_ATTACKS, load_all
    from obliviate.diffusion.audit import DiffusionAuditConfig, audit_concept
    from obliviate.diffusion.evaluate import SampleConfig
    from obliviate.diffusion.model import load_t2i
    from obliviate.diffusion.world import factor_of
    from obliviate.core.outputs import check_output, output_dir
    from obliviate.core.jsonio import write_json

    read = (model, target, data, classifiers)
    check_output(out, "audit", inputs=read)
    if not concept:
        raise UsageError("--suite diffusion needs --concept WORD (the erased concept)")
    if not target:
        raise UsageError("--suite diffusion needs --target DIR: the model before erasure (the attacks aim at its "
                         "images)")
    load_all()
    names = attacks or DIFFUSION_ATTACKS.names()
    for a in names:
        DIFFUSION_ATTACKS.get(a)
    world, clf = _world_and_classifiers(data, classifiers)
    factor_of(world, concept)
    erased, original = load_t2i(model), load_t2i(target)
    cfg = DiffusionAuditConfig(prompts=prompts, sample=SampleConfig(steps=ddim_steps, guidance=guidance, seed=seed),
                               options=options, time_budget=time_budget)
    with output_dir(out, "audit", inputs=read) as o:
        doc = audit_concept(erased, original, clf, world, concept, names, cfg, log=typer.echo)
        doc |= {"model": model, "target": target, "data": str(data)}
        write_json(o / "audit.json", doc)
    typer.echo(f"pre-ASR {doc['pre_asr']:.2f}; " + ", ".join(f"{a} ASR {r['asr']:.2f}"
                                                           for a, r in doc["attacks"].items()))
    typer.echo(f"wrote {out}/audit.json")
    return doc
