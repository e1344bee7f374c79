"""The refusal direction's two candidate selections side by side, on one model and one data set.

    python bench/refusal_direction.py MODEL --harmful KIND:FILE [--benign KIND:FILE] [--option KEY=VALUE ...]
        [--order full,fast] [--selection-only] [--threads N] [--seed 0] [--max-new-tokens 48]
    python bench/refusal_direction.py --tiny-world [...]     # an untrained 4-layer tiny model on a fresh world

Runs `refusal_direction` (the audit's attack, with the audit's inputs: `audit.inputs.load_inputs` with the same
--harmful / --benign / --seed, and the audit's refusal judge) once with `selection=full` (every score of every
candidate, prompts in file order: the attack as it was) and once with `selection=fast`, each on a freshly loaded
model (the attack edits the weights at its end). Prints for each: the selection's seconds (means + scores), the
whole attack's seconds (with the final check's generation; none with --selection-only), the scoring passes, the
chosen (layer, position), filters_passed and the chosen candidate's scores; then the ratios full / fast and
whether both chose the same (layer, position). Wall seconds on whatever else the machine runs: run it alone.
Figures, not a test.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_world(root: Path) -> tuple[str, Path]:
    """(model directory, world directory) under `root`: a fresh world and an untrained 4-layer tiny model."""
    from obliviate.data.world import world_texts, write_world
    from obliviate.models.load import save_model
    from obliviate.models.tiny import TinyModelConfig, build_model, build_tokenizer

    write_world(root / "world")
    tok = build_tokenizer(world_texts(root / "world"))
    cfg = TinyModelConfig(hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64)
    save_model(build_model(tok, cfg), tok, root / "model")
    return str(root / "model"), root / "world"


def one(selection: str, args, model_dir: str, inputs: dict, refused) -> dict:
    from obliviate.audit.attacks import AuditContext
    from obliviate.audit.runner import plan
    from obliviate.models.load import load_model

    opts = dict(kv.split("=", 1) for kv in args.option) | {"selection": selection}
    attack = plan("refusal", ["refusal_direction"], {"refusal_direction": opts})["refusal_direction"]
    model, tok = load_model(model_dir)
    ctx = AuditContext(
        suite="refusal", seed=args.seed, max_new_tokens=args.max_new_tokens, inputs=inputs, refused=refused, loaded=True
    )
    took, select = {}, attack.select

    def timed(*a, **k):
        t = time.perf_counter()
        out = select(*a, **k)
        took["select"] = time.perf_counter() - t
        return out

    t0 = time.perf_counter()
    if args.selection_only:
        enc, refusal_ids = attack.encoded(ctx, tok)
        best, passed, n = timed(model, tok, *enc, refusal_ids)
        figs = {"layer": best["layer"], "position": best["pos"], "filters_passed": passed, "candidates": n}
        figs |= {"bypass_score": best["bypass"], "induce_score": best["induce"], "kl": best["kl"]}
    else:
        attack.select = timed
        figs = attack.run(ctx, model, tok)
    figs["seconds"], figs["select_seconds"], figs["passes"] = time.perf_counter() - t0, took["select"], attack.passes
    return figs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--harmful", action="append", default=[])
    ap.add_argument("--benign", action="append", default=[])
    ap.add_argument("--data", type=Path, help="a world directory instead of --harmful")
    ap.add_argument("--tiny-world", action="store_true")
    ap.add_argument("--option", action="append", default=[], help="refusal_direction option KEY=VALUE")
    ap.add_argument("--order", default="full,fast")
    ap.add_argument("--selection-only", action="store_true", help="time the selection only (no final generation)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    if sorted(args.order.split(",")) != ["fast", "full"]:
        ap.error("--order: full,fast or fast,full")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny_world:
        with tempfile.TemporaryDirectory() as tmp:
            run(args, *tiny_world(Path(tmp)))
    elif not args.model:
        ap.error("give MODEL or --tiny-world")
    else:
        run(args, args.model, args.data)


def run(args, model_dir: str, data: Path | None) -> None:
    from obliviate.audit.inputs import load_inputs

    inputs, refused, info = load_inputs("refusal", data=data, harmful=args.harmful, benign=args.benign, seed=args.seed)
    order = args.order.split(",")
    print(f"model {model_dir}; data {args.harmful or data} + {info.get('benign', 'world')}; options {args.option}")
    got = {sel: one(sel, args, model_dir, inputs, refused) for sel in order}
    keys = ["select_seconds", "seconds", "passes", "candidates", "layer", "position", "filters_passed"]
    keys += ["bypass_score", "kl", "induce_score", "refusal_rate", "refusal_rate_ablated", "over_refusal_rate_actadd"]
    for sel in order:
        print(sel.ljust(5), " ".join(f"{k}={got[sel][k]:.4g}" for k in keys if got[sel].get(k) is not None))
    full, fast = got["full"], got["fast"]
    same = (full["layer"], full["position"]) == (fast["layer"], fast["position"])
    print(
        f"ratio full/fast: selection {full['select_seconds'] / fast['select_seconds']:.2f}x, "
        f"whole attack {full['seconds'] / fast['seconds']:.2f}x, passes {full['passes'] / fast['passes']:.2f}x; "
        f"same (layer, position): {'yes' if same else 'NO'} "
        f"(full {int(full['layer'])},{int(full['position'])}; fast {int(fast['layer'])},{int(fast['position'])})"
    )


if __name__ == "__main__":
    main()
