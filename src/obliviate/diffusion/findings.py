"""What the diffusion attacks found, kept so that it can be looked at and replayed on another model.

An audit with an output directory writes, per attack, `findings/ATTACK/`:

    findings.jsonl   one record per target prompt: {"prompt", "attacked" (false: the plain prompt already showed the
                     concept, as the audit's rule counts it), "success", "found_prompt" (a discrete adversarial
                     prompt, or null), "context" (an embedding file, or null), "terms" (concept arithmetic's
                     composition [[prompt, weight], ...], or null), "image" (a PNG of the generation)}
    NNN.png          each record's image(s), 4x scaled
    NNN.safetensors  each text-embedding context [1, L, d] (no pickles)

`replay(model, findings_dir, recognised)` runs every saved finding on another model: the same found prompts
(byte for byte), the same contexts, the same compositions, sampled with the audit's settings, and judged by the
target concept's classifier. That is transfer between erasers, as P4D (Chin et al. 2024, Sec. 4.3) measures it:
prompts found on one erased model, tried on another.
"""

from __future__ import annotations

from pathlib import Path

import torch

from obliviate.core.errors import UsageError

FINDINGS = "findings"


def finding_record(prompt: str, attacked: bool, success: bool, finding=None) -> dict:
    """One findings.jsonl record (before its files are named): `finding` is an attacks.Finding or None."""
    return {
        "prompt": prompt,
        "attacked": attacked,
        "success": bool(success),
        "found_prompt": getattr(finding, "prompt", None),
        "_context": getattr(finding, "context", None),
        "_images": getattr(finding, "images", None),
    }


def write_findings(out: Path, attack: str, records: list[dict], plain_images: dict[str, torch.Tensor]) -> Path:
    """Write `out/findings/ATTACK/`: the records, their images (the finding's generation, or the plain prompt's
    for a prompt not attacked) and contexts. Returns the directory."""
    from safetensors.torch import save_file

    from obliviate.data.schema import write_jsonl
    from obliviate.diffusion.evaluate import save_grid

    d = out / FINDINGS / attack
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, r in enumerate(records):
        row = {k: v for k, v in r.items() if not k.startswith("_")}
        images = r.get("_images")
        if images is None:
            images = plain_images.get(r["prompt"])
        row["image"] = None
        if images is not None and len(images):
            row["image"] = save_grid([images], d / f"{i:03d}.png").name
        row["context"] = None
        if r.get("_context") is not None:
            save_file({"context": r["_context"].detach().cpu().contiguous()}, str(d / f"{i:03d}.safetensors"))
            row["context"] = f"{i:03d}.safetensors"
        row.setdefault("terms", None)
        rows.append(row)
    write_jsonl(d / "findings.jsonl", rows)
    return d


def findings_dir(root: Path) -> Path:
    """An audit directory's findings/, or `root` itself when it is one."""
    root = Path(root)
    return root / FINDINGS if (root / FINDINGS).is_dir() else root


def read_findings(root: Path) -> dict[str, list[dict]]:
    """attack -> its records, from an audit directory (or its findings/ directory). UsageError naming the
    directory when it holds none."""
    from obliviate.data.schema import read_jsonl

    base = findings_dir(root)
    files = sorted(base.glob("*/findings.jsonl")) if base.is_dir() else []
    out = {f.parent.name: [r for _, r in read_jsonl(f)] for f in files}
    if not any(out.values()):
        raise UsageError(
            f"{root}: no findings to replay (expected {FINDINGS}/ATTACK/findings.jsonl from "
            "`obliviate audit --suite diffusion --out DIR`)"
        )
    return out


def replayable(rec: dict) -> bool:
    return bool(rec.get("found_prompt") or rec.get("context") or rec.get("terms"))


def replay(model, root: Path, found: dict[str, list[dict]], recognised, sample, log=lambda s: None) -> dict:
    """Every saved finding (`found`: `read_findings(root)`) of the audit at `root` run on `model`, judged by
    `recognised(images) -> [bool]`.
    Returns {attack: {"transfer_asr": share of replayed findings recognised (concept arithmetic: the mean of its
    compositions' rates), "replayed": n, "records": findings records for `write_findings`}}; records with nothing
    found (prompts the source model already generated) are not replayed."""
    from safetensors.torch import load_file

    from obliviate.diffusion.attacks.concept_arithmetic import composed_sample

    base = findings_dir(root)
    out = {}
    for attack, records in found.items():
        rows = []
        for rec in filter(replayable, records):
            ctx = None
            if rec.get("terms"):
                terms = [(p, float(w)) for p, w in rec["terms"]]
                n = int(rec.get("samples") or 8)
                imgs = composed_sample(model, terms, n, steps=sample.steps, seed=sample.seed)
            elif rec.get("context"):
                ctx = load_file(str(base / attack / rec["context"]))["context"].to(model.device)
                width = model.text_encoder.config.hidden_size
                if ctx.shape[-1] != width:
                    raise UsageError(
                        f"{base / attack / rec['context']}: a context of width {ctx.shape[-1]}; this model's text "
                        f"encoder has width {width}"
                    )
                imgs = model.sample(
                    [rec["prompt"]], context=ctx, steps=sample.steps, guidance=sample.guidance, seed=sample.seed
                )
            else:
                imgs = model.sample(
                    [rec["found_prompt"]], steps=sample.steps, guidance=sample.guidance, seed=sample.seed
                )
            hits = list(recognised(imgs))
            rate = sum(hits) / len(hits)
            rows.append(
                {k: rec.get(k) for k in ("prompt", "found_prompt", "terms", "samples")}
                | {"attacked": True, "success": rate > 0, "_images": imgs, "_context": ctx}
                | ({"success_rate": rate} if rec.get("terms") else {})
            )
        rate = sum(r.get("success_rate", float(r["success"])) for r in rows) / len(rows) if rows else float("nan")
        out[attack] = {"transfer_asr": rate, "replayed": len(rows), "records": rows}
        log(f"{attack}: {len(rows)} findings replayed, transfer ASR {rate:.2f}")
    return out
