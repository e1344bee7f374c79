"""The real-model demo's refusal-direction ablation (Arditi et al. 2024) of its DeRTa model: candidate layers, the
split of training prompts between the difference in means and the selection, and the weight edit."""

from __future__ import annotations

import random
from contextlib import nullcontext

from obliviate.core.errors import UsageError


def direction_layers(n_layers: int, stride: int) -> list[int]:
    """Candidate layers for the demo's refusal direction: every `stride`-th layer below 0.8 L, without layer 0. The
    residual entering layer 0 at a template token is that token's embedding, the same for every prompt, so its
    direction is zero; a model of <= 4 layers would have no other candidate at stride 3 and gets the last one
    below 0.8 L instead."""
    top = max(1, int(0.8 * n_layers))
    return [x for x in range(0, top, stride) if x > 0] or [min(n_layers - 1, max(1, top - 1))]


def direction_split(prompts: list[str], n_fit: int, n_val: int) -> tuple[list[str], list[str]]:
    """(prompts for the difference in means, prompts for the selection), disjoint: the selection takes up to n_val
    (at most half, at least one), the means up to n_fit of the rest. The means are the noisier part (see
    `RealDemoSize.direction_prompts`), so they get what is left once selection has its share."""
    if len(prompts) < 2:
        raise UsageError(f"the refusal direction needs at least 2 prompts of each class (got {len(prompts)})")
    v = max(1, min(n_val, len(prompts) // 2))
    return prompts[: min(n_fit, len(prompts) - v)], prompts[len(prompts) - v :]


def ablate_refusal_direction(model_dir: str, data, size, seed: int):
    """The DeRTa model with its refusal direction (Arditi et al. 2024) projected out of the weights. The direction is
    the difference in means between AdvBench training prompts and benign training prompts (never evaluation
    prompts), selected among every `direction_layer_stride`-th layer below 0.8 L at the last post-instruction
    position, on held-out training prompts of each class (the attack's selection rule; fewer candidates keep it
    within minutes on a CPU). `size` is the demo's `RealDemoSize` (its direction_* fields). `direction_split` shares each class's prompts between the means and the selection.
    Returns (model, tokenizer, info, context): the context is a no-op, or, on an architecture whose writes no weight
    edit expresses (see `orthogonalize`), the hook-based ablation to measure under."""
    from obliviate.audit.attacks.refusal_direction import RefusalDirection, ablation, orthogonalize
    from obliviate.models.anatomy import decoder_layers
    from obliviate.models.encode import answer_ids, prompt_ids
    from obliviate.models.load import load_model

    model, tok = load_model(model_dir)

    rng = random.Random(seed)
    harmful = [r["prompt"] for r in data.harmful]
    harmless = [r["prompt"] for r in data.benign] + [it.question for it in data.people]
    rng.shuffle(harmful), rng.shuffle(harmless)
    (h_fit, h_val), (b_fit, b_val) = (
        direction_split(ps, size.direction_prompts, size.direction_val_prompts) for ps in (harmful, harmless)
    )
    layers = len(decoder_layers(model))
    stride = size.direction_layer_stride
    attack = RefusalDirection(layers=",".join(map(str, direction_layers(layers, stride))), positions=1)
    enc = [[prompt_ids(tok, p) for p in ps] for ps in (h_fit, b_fit, h_val, b_val)]
    refusal_ids = sorted({answer_ids(tok, r["refusal"])[0] for r in data.harmful})
    best, passed, _ = attack.select(model, tok, *enc, refusal_ids)
    r_hat = best["r"] / best["r"].norm()
    info = {
        "layer": best["layer"],
        "position": best["pos"],
        "filters_passed": passed,
        **{k: round(best[k], 4) for k in ("bypass", "induce", "kl")},
        "prompts": {"means": [len(h_fit), len(b_fit)], "selection": [len(h_val), len(b_val)]},
    }
    try:
        orthogonalize(model, r_hat)
    except UsageError:  # an architecture whose writes no weight edit expresses: ablate with hooks instead
        model, tok = load_model(model_dir)
        return model, tok, info | {"orthogonalized": False}, ablation(model, r_hat)
    return model, tok, info | {"orthogonalized": True}, nullcontext()
