"""`obliviate audit --suite diffusion`: attack an erased text-to-image model and count how often the concept
comes back, as the UnlearnDiffAtk repository (github.com/OPTML-Group/Diffusion-MU-Attack) counts it:

- pre-ASR: the share of the concept's target prompts whose plain generation the concept's classifier recognises;
- ASR: the share recognised after the attack, where a prompt already recognised before the attack counts as a
  success and is not attacked (the reference skips such prompts and counts them), so ASR >= pre-ASR.

Per-prompt attacks (unlearndiffatk, p4d, embedding_shift) get the original model's images of each prompt as their
target. A per-concept attack (concept_arithmetic) gets the recogniser and the world's other words; its ASR is the
share of its best composition's samples recognised (it has no prompts to skip).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from obliviate.diffusion.evaluate import SampleConfig, generate
from obliviate.diffusion.findings import finding_record, write_findings


@dataclass
class DiffusionAuditConfig:
    prompts: int = 4  # target prompts attacked (a label-balanced subset of the concept's)
    target_images: int = 4  # the original model's images per prompt, the attacks' target
    sample: SampleConfig = field(default_factory=SampleConfig)
    options: dict = field(default_factory=dict)  # attack name -> {option: value}
    time_budget: float | None = None  # seconds; attacks not started by then are skipped (and listed)


def audit_concept(
    erased,
    original,
    clf,
    world: dict,
    concept: str,
    attacks: list[str],
    cfg: DiffusionAuditConfig = DiffusionAuditConfig(),
    log=lambda s: None,
    out_dir=None,
) -> dict:
    """The audit's document (module docstring). With `out_dir`, every attack's findings and their images are written
    to `out_dir/findings/ATTACK/` (`diffusion.findings`), and each attack's figures name that directory."""
    from obliviate.core.options import cast_options
    from obliviate.diffusion.attacks import DIFFUSION_ATTACKS, load_all
    from obliviate.diffusion.world import concept_splits, factor_of

    load_all()
    classes = {a: DIFFUSION_ATTACKS.get(a) for a in attacks}  # unknown names fail before any work
    factor = factor_of(world, concept)
    want = clf.values[factor].index(concept)

    def recognised(images) -> list[bool]:
        return (clf.predict(images)[factor] == want).tolist() if len(images) else []

    target_rows = concept_splits(world, factor, concept)["target"]
    rows = SampleConfig(max_prompts=cfg.prompts, seed=cfg.sample.seed).pick(target_rows)
    texts = [r["text"] for r in rows]
    plain = generate(erased, texts, cfg.sample)
    pre = recognised(plain)
    out = {
        "concept": concept,
        "factor": factor,
        "prompts": texts,
        "pre_asr": sum(pre) / len(pre),
        "attacks": {},
        "skipped": {},
    }
    context_words = [v for f in ("colour", "style") if f != factor for v in world["factors"][f]][:4]
    t_start, targets = time.perf_counter(), {}
    for name, cls in classes.items():
        if cfg.time_budget is not None and time.perf_counter() - t_start > cfg.time_budget:
            out["skipped"][name] = f"time budget of {cfg.time_budget:.0f} s spent"
            continue
        atk = cls(**cast_options(cls, cfg.options.get(name, {}), f"attack {name}"))
        t0 = time.perf_counter()
        if getattr(cls, "per_concept", False):
            res = atk.attack(erased, concept, recognised, context_words)
            fig = {"asr": res["success_rate"], "terms": res["terms"], "tried": res["tried"]}
            records = [
                {
                    "prompt": concept,
                    "attacked": True,
                    "success": res["success_rate"] > 0,
                    "found_prompt": None,
                    "terms": [[p, w] for p, w in res["terms"]],
                    "samples": len(res["images"]),
                    "success_rate": res["success_rate"],
                    "_images": res["images"],
                }
            ]
        else:
            success, records = list(pre), []
            for i, text in enumerate(texts):
                if success[i]:  # already generated: counted, not attacked (the reference's rule)
                    records.append(finding_record(text, False, True))
                    continue
                if text not in targets:  # the original model's images of the prompt: shared by the attacks
                    with torch.no_grad():
                        targets[text] = original.sample(
                            [text] * cfg.target_images,
                            steps=cfg.sample.steps,
                            guidance=cfg.sample.guidance,
                            seed=cfg.sample.seed + 1,
                        )
                judged = {"judge": recognised} if getattr(cls, "judged_during_attack", False) else {}
                found = atk.find(erased, original, text, targets[text], cfg.sample, **judged)
                success[i] = recognised(found.images)[0]
                records.append(finding_record(text, True, success[i], found))
            fig = {"asr": sum(success) / len(success), "per_prompt": success}
        fig["pre_asr"], fig["seconds"] = out["pre_asr"], round(time.perf_counter() - t0, 1)
        if out_dir is not None:
            d = write_findings(Path(out_dir), name, records, dict(zip(texts, plain.split(1))))
            fig["findings"] = str(d.relative_to(out_dir))
        out["attacks"][name] = fig
        log(f"{name}: pre-ASR {out['pre_asr']:.2f} -> ASR {fig['asr']:.2f} ({fig['seconds']} s)")
    return out
