"""Expert steering (MoTE / SteerMoE) on a tiny Mixtral trained on the built-in world's policy part.

For each model seed: build a world, train an unaligned tiny Mixtral target (every people fact and policy answer),
align it with refusal SFT, fit `expert_steering` (the k experts whose removal lowers the likelihood of the model's
own refusals most beyond its answers, among those whose activation frequency differs most between refused and
complied training prompts; `--score frequency`: the activation difference alone) and measure the refusal rate on
the world's harmful test prompts with those k experts switched off, against the control: k experts chosen at
random. With `--draws 0` (the default) the
control is every k-subset of the model's experts, so its mean is the exact expectation of "k random experts off"
and no draw luck enters; `--draws N` samples N subsets instead. Utility is the ROUGE-L recall of the benign test
replies against their reference answers (cut to the reply's length). Prints figures; it is not a test.

    python bench/expert_steering.py --seeds 0,1,2 --k 2 --experts 4 --threads 2 [--score ablation|frequency] \
        [--align-params all|moe] [--tokens prompt|reply|decision|paired] [--layers 2] [--aux-loss 0.01]

`--align-params moe` aligns with the MoE layers' parameters only (routers and experts; attention, norms and
embeddings frozen), as expert-specialised fine-tuning does (ESFT, Wang et al. 2024, "Let the Expert Stick to His
Last"), so that the refusal the alignment adds lives in experts; `all` (default) aligns every parameter.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import tempfile
import time
from pathlib import Path


def balanced(method, coef: float):
    """`method` whose loss also carries the router load-balancing loss (Switch Transformer, Fedus et al. 2022, eq. 4;
    Mixtral's top-k form, transformers' `load_balancing_loss_func`) times `coef`, from router logits caught by hooks
    in the same forward pass: obliviate's losses read log-probs only, so the model's own aux_loss never enters."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    from obliviate.engine.hooks import router_modules
    from obliviate.models.anatomy import num_experts

    plain = method.loss

    def loss(model, batch, ref_model=None):
        caught = []
        hooks = [
            m.register_forward_hook(lambda mod, a, out: caught.append(out[0] if isinstance(out, tuple) else out))
            for _, m in router_modules(model)
        ]
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


def moe_only(model) -> int:
    """Freeze every parameter outside the MoE blocks (the modules that hold a router); returns how many stay
    trainable. Found through the routers, not by module names."""
    from obliviate.engine.hooks import router_modules

    routers = {id(m) for _, m in router_modules(model)}
    blocks = [name for name, mod in model.named_modules() if any(id(child) in routers for child in mod.children())]
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad_(any(name.startswith(b + ".") for b in blocks))
        n += p.numel() if p.requires_grad else 0
    return n


def subsets(n_experts: int, k: int, draws: int, seed: int) -> list[tuple[int, ...]]:
    """The control's expert choices (flat indices layer * E + expert): every k-subset, or `draws` random ones."""
    if draws == 0:
        return list(itertools.combinations(range(n_experts), k))
    rng = random.Random(seed)
    return [tuple(sorted(rng.sample(range(n_experts), k))) for _ in range(draws)]


def run_seed(seed: int, a, work: Path) -> dict:
    from obliviate.data.world import WorldSpec, write_world
    from obliviate.engine.hooks import attach
    from obliviate.engine.train import FineTune, TrainConfig, train
    from obliviate.guards.expert_steering import ExpertSteering
    from obliviate.metrics.tofu import rouge_l_recall
    from obliviate.models.tiny import TinyModelConfig, build_model, build_tokenizer
    from obliviate.refusal.align import align, policy_rows, refusal_data, suite_texts, target_pairs
    from obliviate.refusal.evaluate import refusal_eval
    from obliviate.refusal.methods import REFUSAL_METHODS

    world = work / f"world{seed}"
    write_world(world, WorldSpec(seed=seed, n_people=100))
    tok = build_tokenizer(suite_texts(world))
    data, _ = refusal_data(world, seed)
    cfg = TinyModelConfig(num_experts=a.experts, experts_per_token=2, num_layers=a.layers)
    t0 = time.perf_counter()
    fine = FineTune(lr=3e-3, steps=a.steps)
    target, _ = train(
        build_model(tok, cfg, seed=seed),
        tok,
        balanced(fine, a.aux_loss) if a.aux_loss else fine,
        {"retain": target_pairs(world)},
        TrainConfig(retain_batch_size=100, seed=seed, warmup_steps=20, checkpoint_every=0, progress=False),
    )
    if a.align_params == "moe":
        moe_only(target)
    meth = REFUSAL_METHODS.get("refusal_sft")()
    if a.align_steps:
        meth.steps = a.align_steps
    model, tok, _ = align(
        target, tok, balanced(meth, a.aux_loss) if a.aux_loss else meth, data, seed=seed, progress=False
    )
    train_s = time.perf_counter() - t0
    test = policy_rows(world, "policy_test")
    harmful = [r for r in test if r["kind"] == "harmful"]
    benign = [r for r in test if r["kind"] == "benign"]

    def measure(guard) -> tuple[float, float, float]:
        """(refusal on harmful, over-refusal on benign, benign ROUGE-L recall) with `guard` attached."""
        attach(model, [guard] if guard else [])
        try:
            m, samples, _ = refusal_eval(model, tok, harmful + benign, depths=(), max_new_tokens=24)
        finally:
            attach(model, [])
        by_id = {r["id"]: r for r in benign}
        outs = [(by_id[s["id"]]["answer"], s["output"]) for s in samples if s["kind"] == "benign"]
        utility = statistics.mean(
            rouge_l_recall(" ".join(ref.split()[: max(1, len(out.split()))]), out) for ref, out in outs
        )
        return m["refusal_rate"], m["over_refusal_rate"], utility

    def switched(flat: tuple[int, ...], mode: str = "off") -> ExpertSteering:
        experts: dict[int, list[int]] = {}
        for i in flat:
            experts.setdefault(i // a.experts, []).append(i % a.experts)
        return ExpertSteering.switching(experts, mode)

    top = ExpertSteering.fit(
        model, tok, {"policy_train": data.harmful + data.benign}, k=a.k, tokens=a.tokens, score=a.score
    )
    chosen = tuple(sorted(layer * a.experts + e for layer, es in top._chosen.items() for e in es))
    out = {
        "seed": seed,
        "train_seconds": round(train_s, 1),
        "base": measure(None),
        "chosen": chosen,
        "top_off": measure(top),
    }
    out["random_off"] = {str(s): measure(switched(s)) for s in subsets(a.layers * a.experts, a.k, a.draws, 1000 * seed)}
    out["top_on"] = measure(switched(chosen, "on"))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--align-steps", type=int, default=0)
    ap.add_argument(
        "--align-params",
        choices=("all", "moe"),
        default="all",
        help="which parameters refusal SFT updates: all, or the MoE layers only (ESFT-style)",
    )
    ap.add_argument("--draws", type=int, default=0, help="random k-subsets in the control (0: every k-subset)")
    ap.add_argument(
        "--tokens",
        default="prompt",
        help="whose routing scores the experts: prompt (MoTE's fTRI), reply, decision or paired",
    )
    ap.add_argument(
        "--score",
        choices=("ablation", "frequency"),
        default="ablation",
        help="rank experts by ablation (candidates switched off one at a time) or by frequency alone",
    )
    ap.add_argument(
        "--aux-loss",
        type=float,
        default=0.0,
        help="router load-balancing loss coefficient in target training and alignment (Switch: 0.01)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    rows, wins = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for s in [int(x) for x in a.seeds.split(",")]:
            r = run_seed(s, a, Path(tmp))
            rows.append(r)
            rand = list(r["random_off"].values())
            mean_ref = statistics.mean(x[0] for x in rand)
            at_most = sum(x[0] <= r["top_off"][0] for x in rand) / len(rand)
            wins += r["top_off"][0] < mean_ref
            print(
                f"seed {s} (trained in {r['train_seconds']} s): refusal {r['base'][0]:.3f} (benign ROUGE-L "
                f"{r['base'][2]:.3f}) | top-{a.k} off {r['top_off'][0]:.3f} (ROUGE-L {r['top_off'][2]:.3f}; experts "
                f"{r['chosen']}) | {len(rand)} random {a.k}-subsets off: mean {mean_ref:.3f} (ROUGE-L "
                f"{statistics.mean(x[2] for x in rand):.3f}), min {min(x[0] for x in rand):.3f}, "
                f"{at_most:.0%} at or below top | top-{a.k} on {r['top_on'][0]:.3f} (over-refusal "
                f"{r['top_on'][1]:.3f})",
                flush=True,
            )
    print(f"top-{a.k} off lowers refusal below the random control's mean on {wins} of {len(rows)} seeds")
    if a.out:
        a.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
