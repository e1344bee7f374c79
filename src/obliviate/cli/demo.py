"""`obliviate demo`: the whole pipeline on a built-in world (unlearning or refusal)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer

from obliviate.cli.common import (
    STARTED,
    UTILITY_LIMIT_OPTION,
    UTILITY_OPTION,
    UTILITY_TASKS_OPTION,
    attack_options,
    set_threads,
)
from obliviate.core.errors import UsageError


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="output directory"),
    seed: int = typer.Option(0),
    methods: Optional[str] = typer.Option(
        None,
        help="comma-separated methods, or 'all' (default: the six TOFU/NPO baselines, which fit the 2-minute budget); "
        "diffusion: the erasers and guards to run (default: every one but the opt-in sfd)",
    ),
    suite: str = typer.Option(
        "world",
        help="world (unlearning), refusal (refusal methods), real "
        "(a pretrained chat model, --model) or diffusion (concept "
        "erasure in a text-to-image model)",
    ),
    model: Optional[str] = typer.Option(None, help="--suite real: the chat model directory"),
    public_data: Path = typer.Option(
        Path("../shared/data"),
        help="--suite real: folder with harmbench/, jailbreakbench/, xstest/, advbench/ as published",
    ),
    size: str = typer.Option("full", help="--suite real / diffusion: full (the benchmark-size run) or smoke"),
    parts: str = typer.Option("unlearning,refusal", help="--suite real: which halves to run"),
    guards: bool = typer.Option(
        False,
        "--guards",
        help="world: add ECO and GUARD rows (guards on the target); "
        "refusal: add ADA-LP and latent-guard rows (guards on the refusal-SFT model)",
    ),
    workers: Optional[int] = typer.Option(
        None,
        help="world and diffusion suites: processes training models "
        "side by side (default 2 with >= 2 cores and threads, each "
        "single-threaded)",
    ),
    attacks: Optional[str] = typer.Option(
        None,
        help="--suite real: audit attacks to run on the DeRTa model after the refusal half (e.g. "
        "random_search,gcg: the opt-in prompt searches), with their time reported",
    ),
    option: List[str] = typer.Option([], help="--suite real with --attacks: attack option ATTACK.KEY=VALUE"),
    derta_seeds: int = typer.Option(
        1, help="--suite real: train DeRTa with this many seeds and report its rows as mean and spread over them"
    ),
    oracles: int = typer.Option(
        1, help="world: train K oracles (seeds SEED..SEED+K-1); K > 1 adds KLoM and forget_quality_pooled"
    ),
    unlearn_seeds: int = typer.Option(
        1, help="world: run each method with S seeds; its row is their mean, and KLoM compares their distribution"
    ),
    utility: Optional[str] = UTILITY_OPTION,
    utility_tasks: Optional[Path] = UTILITY_TASKS_OPTION,
    utility_limit: int = UTILITY_LIMIT_OPTION,
    threads: Optional[int] = typer.Option(None),
):
    """World -> target + oracle -> methods on forget10 -> evaluation, table and report.

    With --suite refusal: world -> unaligned target -> every refusal method -> refusal at depth, over-refusal,
    utility, a fine-tuning attack -> results.json and refusal_depth.png.

    With --suite real --model DIR: the same science on a pretrained chat model (see docs/real-models.md)."""
    from obliviate.core.outputs import check_output

    # a demo replaces an earlier demo's output, and nothing else
    check_output(out, f"demo:{suite}", inputs=(model, public_data) if suite == "real" else (), replace=True)
    from obliviate.report.html import write_beside  # OUT/report.html; a failed report only warns

    set_threads(threads)
    if utility and suite not in ("world", "refusal"):
        raise UsageError(
            "--utility applies to --suite world and refusal (the real demo always reports TOFU's world-facts figure)"
        )
    from obliviate.engine.utility import parse_utility

    util = parse_utility(utility, utility_tasks, utility_limit)
    if workers is not None and (workers < 1 or suite not in ("world", "diffusion")):
        raise UsageError(f"--workers must be >= 1 and applies to --suite world and diffusion, got {workers}")
    if suite == "real":
        from obliviate.demos.real import FULL, SMOKE, run_real_demo

        if not model:
            raise UsageError("--suite real needs --model DIR (e.g. models/smollm2-135m-instruct: `make real-model`)")
        if size not in ("full", "smoke"):
            raise UsageError(f"--size must be 'full' or 'smoke', got {size!r}")
        chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
        if not chosen or set(chosen) - {"unlearning", "refusal"}:
            raise UsageError(f"--parts must list 'unlearning' and/or 'refusal', got {parts!r}")
        if methods or guards:
            raise UsageError(
                "--methods and --guards do not apply to --suite real (it runs a fixed set; see docs/real-models.md)"
            )
        if derta_seeds < 1:
            raise UsageError(f"--derta-seeds must be >= 1, got {derta_seeds}")
        run_real_demo(
            out,
            model,
            public_data,
            size=replace(FULL if size == "full" else SMOKE, derta_seeds=derta_seeds),
            seed=seed,
            parts=chosen,
            started=STARTED,
            attacks=tuple(a.strip() for a in attacks.split(",") if a.strip()) if attacks else (),
            attack_options=attack_options(option),
        )
        write_beside(out)
        return
    if suite == "diffusion":
        from obliviate.demos.diffusion import FULL, SMOKE, run_diffusion_demo

        if size not in ("full", "smoke"):
            raise UsageError(f"--size must be 'full' or 'smoke', got {size!r}")
        if guards or model:
            raise UsageError("--guards and --model do not apply to --suite diffusion")
        chosen = FULL if size == "full" else SMOKE
        if methods:  # the erasers (and guards) to run, e.g. uce,esd_x,sfd (the default leaves out the opt-in sfd)
            names = [m.strip() for m in methods.split(",") if m.strip()]
            chosen = replace(
                chosen,
                erasers=tuple(n for n in names if n not in ("gog",)),
                guards=tuple(n for n in names if n == "gog"),
                first_concept_only=(),  # a named eraser runs on every concept
            )
        run_diffusion_demo(out, size=chosen, seed=seed, started=STARTED, workers=workers)
        write_beside(out)
        return
    if attacks or option or derta_seeds != 1:
        raise UsageError("--attacks, --option and --derta-seeds apply to --suite real")
    if suite != "world" and (oracles != 1 or unlearn_seeds != 1):
        raise UsageError("--oracles and --unlearn-seeds apply to --suite world")
    if oracles < 1 or unlearn_seeds < 1:
        raise UsageError(f"--oracles and --unlearn-seeds must be >= 1, got {oracles} and {unlearn_seeds}")
    if model or size != "full":
        raise UsageError("--model and --size apply to --suite real and diffusion")
    meths = methods.split(",") if methods else None
    if suite == "refusal":
        from obliviate.demos.refusal import run_refusal_demo

        run_refusal_demo(out, seed=seed, methods=meths, started=STARTED, guards=guards, utility=util)
        write_beside(out)
        return
    if suite != "world":
        raise UsageError(f"unknown demo suite {suite!r}; use 'world', 'refusal', 'real' or 'diffusion'")
    from obliviate.demos.world import run_demo

    run_demo(
        out,
        seed=seed,
        methods=meths,
        started=STARTED,
        guards=guards,
        workers=workers,
        oracles=oracles,
        unlearn_seeds=unlearn_seeds,
        utility=util,
    )
    write_beside(out)
