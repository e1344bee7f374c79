"""Expert steering (MoTE / SteerMoE) on a tiny Mixtral trained on the built-in world's policy part.

For each model seed: build a world, train an unaligned tiny Mixtral target (every people fact and policy answer),
align it with refusal SFT, fit `expert_steering` (the k experts whose activation frequency differs most between
refused and complied training prompts) and measure the refusal rate on the world's harmful test prompts with
those k experts switched off, against k experts drawn at random (3 draws). Prints figures; it is not a test.

    python bench/expert_steering.py --seeds 0,1,2 --k 2 --experts 4 --threads 2 \
        [--tokens reply|prompt|decision|paired] [--layers 2] [--aux-loss 0.02]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def balanced(method, coef: float):
    """`method` whose loss also carries the router load-balancing loss (Switch Transformer, Fedus et al. 2022, eq. 4;
    Mixtral's top-k form, transformers' `load_balancing_loss_func`) times `coef`, from router logits caught by hooks
    in the same forward pass: obliviate's losses read log-probs only, so the model's own aux_loss never enters."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    from obliviate.guards import num_experts, router_modules

    plain = method.loss

    def loss(model, batch, ref_model=None):
        caught = []
        hooks = [m.register_forward_hook(lambda mod, a, out: caught.append(out[0] if isinstance(out, tuple) else out))
                 for _, m in router_modules(model)]
        try:
            value, logs = plain(model, batch, ref_model)
        finally:
            for h in hooks:
                h.remove()
        top_k = int(model.config.num_experts_per_tok)
        aux = load_balancing_loss_func(tuple(caught), num_experts(model), top_k)  # pads included: a bench
        return value + coef * aux, logs | {"aux": float(aux.detach())}

    method.loss = loss
    return method


def run_seed(seed: int, k: int, experts: int, steps: int, align_steps: int, draws: int, work: Path,
             tokens: str = "reply", layers: int = 2, aux: float = 0.0) -> dict:
    from obliviate.data.world import WorldSpec, write_world
    from obliviate.guards import attach
    from obliviate.guards.expert_steering import ExpertSteering
    from obliviate.models.tiny import TinyModelConfig, build_model, build_tokenizer
    from obliviate.refusal import REFUSAL_METHODS
    from obliviate.suites.refusal import align, refusal_data, suite_texts, target_pairs
    from obliviate.suites.refusal_eval import refusal_eval
    from obliviate.suites.refusal import policy_rows
    from obliviate.train import FineTune, TrainConfig, train

    world = work / f"world{seed}"
    write_world(world, WorldSpec(seed=seed, n_people=100))
    tok = build_tokenizer(suite_texts(world))
    data, _ = refusal_data(world, seed)
    cfg = TinyModelConfig(num_experts=experts, experts_per_token=2, num_layers=layers)
    t0 = time.perf_counter()
    fine = FineTune(lr=3e-3, steps=steps)
    target, _ = train(build_model(tok, cfg, seed=seed), tok, balanced(fine, aux) if aux else fine,
                      {"retain": target_pairs(world)},
                      TrainConfig(retain_batch_size=100, seed=seed, warmup_steps=20, checkpoint_every=0,
                                  progress=False))
    meth = REFUSAL_METHODS.get("refusal_sft")()
    if align_steps:
        meth.steps = align_steps
    model, tok, _ = align(target, tok, balanced(meth, aux) if aux else meth, data, seed=seed, progress=False)
    train_s = time.perf_counter() - t0
    test = [r for r in policy_rows(world, "policy_test") if r["kind"] == "harmful"]

    def refusal(guards) -> float:
        attach(model, guards)
        try:
            m, _, _ = refusal_eval(model, tok, test, depths=(), max_new_tokens=24)
        finally:
            attach(model, [])
        return m["refusal_rate"]

    inputs = {"policy_train": data.harmful + data.benign}
    top = ExpertSteering.fit(model, tok, inputs, k=k, tokens=tokens)
    out = {"seed": seed, "train_seconds": round(train_s, 1), "refusal_base": refusal([]),
           "chosen": {str(a): b for a, b in top._chosen.items()}, "refusal_top_off": refusal([top])}
    rand = []
    for d in range(draws):
        g = ExpertSteering(k=k, select="random", seed=1000 * seed + d)
        g._scores = top._scores
        g.attach(model, tok)
        rand.append(refusal([g]))
    out["refusal_random_off"] = rand
    on = ExpertSteering(k=k, mode="on")
    on._scores = top._scores
    on.attach(model, tok)
    benign = [r for r in policy_rows(world, "policy_test") if r["kind"] == "benign"]
    attach(model, [on])
    try:
        m, _, _ = refusal_eval(model, tok, test + benign, depths=(), max_new_tokens=24)
    finally:
        attach(model, [])
    out["refusal_top_on"], out["over_refusal_top_on"] = m["refusal_rate"], m["over_refusal_rate"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--align-steps", type=int, default=0)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--tokens", default="reply",
                    help="whose routing scores the experts: reply, prompt, decision or paired")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--aux-loss", type=float, default=0.0,
                    help="router load-balancing loss coefficient in target training and alignment (Switch: 0.01)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in [int(x) for x in a.seeds.split(",")]:
            r = run_seed(s, a.k, a.experts, a.steps, a.align_steps, a.draws, Path(tmp), a.tokens, a.layers, a.aux_loss)
            rows.append(r)
            rand = r["refusal_random_off"]
            print(f"seed {s}: refusal {r['refusal_base']:.3f} | top-{a.k} off {r['refusal_top_off']:.3f} | "
                  f"random-{a.k} off {', '.join(f'{x:.3f}' for x in rand)} (mean {sum(rand) / len(rand):.3f}) | "
                  f"top-{a.k} on {r['refusal_top_on']:.3f} (over-refusal {r['over_refusal_top_on']:.3f}) | "
                  f"experts {r['chosen']} | trained in {r['train_seconds']} s", flush=True)
    wins = sum(r["refusal_top_off"] < min(r["refusal_random_off"]) for r in rows)
    print(f"top-{a.k} off lowers refusal more than every random draw on {wins} of {len(rows)} seeds")
    if a.out:
        a.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
