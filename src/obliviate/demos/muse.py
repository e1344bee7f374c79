"""MUSE-style six-way evaluation on the world's passages (Shi et al. 2025, "MUSE: Machine Unlearning Six-Way
Evaluation for Language Models", ICLR 2025, sec. 3).

The six criteria and the score each is reduced to (one table row per method):

  C1 verbmem_forget    ROUGE-L F1 between the greedy continuation of the first `prefix_tokens` tokens of each
                       forget passage and its true continuation (MUSE: prefix, greedy, ROUGE-L F1). Lower.
  C2 knowmem_forget    ROUGE-L F1 of greedy answers to questions about forget passages. Lower.
  C3 privleak          MUSE's PrivLeak (%) of Min-K% (k = 0.4) AUC, forget vs holdout passages, relative to the
                       oracle (`obliviate.metrics.mia.privleak`). Near 0; about -100 = leaking.
  C4 knowmem_retain    ROUGE-L F1 on questions about retain passages (utility), also shown / target's. Higher.
  C5 scalability       mean over the nested forget sets scal1..4 (growing sizes) of knowmem_retain / target's,
                       each unlearned from the target. 1 = utility independent of the request size.
  C6 sustainability    knowmem_retain / target's after the 4 requests sust1..4, applied one after another, each
                       starting from the previous model. 1 = utility survives repeated requests.

MUSE scores with ROUGE-L F1 (no stemmer); so do we. Questions are asked through the chat template, not MUSE's
in-context "Question: / Answer:" prompt, since the tiny model was trained that way.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from obliviate.benchmarks.muse import knowmem, mink_auc, muse_scores
from obliviate.core.timer import Timer

REQUESTS = 4


def _parts(forget: list[dict], retain: list[dict], idk: list[str], seed: int) -> dict:
    import random

    from obliviate.data.passages import training_pairs

    f = training_pairs(forget)
    rng = random.Random(seed)
    return {
        "forget": f,
        "retain": training_pairs(retain),
        "forget_idk": [(q, rng.choice(idk)) for q, _ in f],
    }  # aligned with "forget" item by item


def run_muse(
    out: Path, *, seed: int = 0, methods: list[str] | None = None, finetune_steps: int = 300, progress: bool = False
) -> dict:
    from rich.console import Console

    from obliviate.core.errors import UsageError
    from obliviate.core.jsonio import write_json
    from obliviate.core.outputs import output_dir
    from obliviate.data.passages import load_passages, training_pairs, write_passages
    from obliviate.demos.world import DEMO_METHODS
    from obliviate.engine.train import FineTune, TrainConfig, train
    from obliviate.models.load import load_model, save_model
    from obliviate.models.tiny import build_model, build_tokenizer
    from obliviate.runs.results import results_document
    from obliviate.unlearning.methods import METHODS
    from obliviate.unlearning.run import idk_pool

    clock = Timer()
    console = Console(stderr=True, log_path=False)
    names = METHODS.names() if methods == ["all"] else (methods or list(DEMO_METHODS))
    classes = {n: METHODS.get(n) for n in names}
    with output_dir(out, "muse") as o:
        write_passages(o / "world", seed)
        data = {f.stem: load_passages(f) for f in sorted((o / "world").glob("muse_*.jsonl"))}
        texts = [p["text"] for k in ("muse_forget", "muse_retain", "muse_holdout") for p in data[k]]
        tok = build_tokenizer(
            texts
            + [
                x["question"] + " " + x["answer"]
                for k in ("muse_forget", "muse_retain", "muse_holdout")
                for p in data[k]
                for x in p["qa"]
            ]
        )
        for name, keep in (("target", data["muse_forget"] + data["muse_retain"]), ("oracle", data["muse_retain"])):
            net = build_model(tok, seed=seed)
            net, _ = train(
                net,
                tok,
                FineTune(steps=finetune_steps),
                {"retain": training_pairs(keep)},
                TrainConfig(retain_batch_size=64, seed=seed, warmup_steps=20, checkpoint_every=0, progress=progress),
            )
            save_model(net, tok, o / "models" / name)
        oracle = load_model(str(o / "models" / "oracle"))[0]
        oracle_auc = mink_auc(oracle, tok, data["muse_forget"], data["muse_holdout"])
        results = {
            "oracle": muse_scores(oracle, tok, data, oracle_auc),
            "target": muse_scores(load_model(str(o / "models" / "target"))[0], tok, data, oracle_auc),
        }
        base_utility = results["target"]["knowmem_retain"]
        idk = idk_pool(None)
        cfg = TrainConfig(seed=seed, checkpoint_every=0, progress=progress)

        def unlearn(start, forget):
            net = load_model(str(start))[0] if isinstance(start, Path) else start
            return train(net, tok, cls(), _parts(forget, data["muse_retain"], idk, seed), cfg)[0]

        for name, cls in classes.items():  # noqa: B007 (unlearn() reads cls)
            try:
                main = unlearn(o / "models" / "target", data["muse_forget"])
            except UsageError as e:  # e.g. AltPO: passages have no alternate answers
                console.log(f"{name}: skipped ({e})")
                continue
            r = muse_scores(main, tok, data, oracle_auc)
            scal = [
                knowmem(unlearn(o / "models" / "target", data[f"muse_scal{k}"]), tok, data["muse_retain"])
                for k in range(1, REQUESTS)
            ] + [r["knowmem_retain"]]  # scal4 is the whole forget set
            model = load_model(str(o / "models" / "target"))[0]
            sust = []
            for k in range(1, REQUESTS + 1):
                model = unlearn(model, data[f"muse_sust{k}"])
                sust.append(knowmem(model, tok, data["muse_retain"]))
            r |= {"scalability_curve": scal, "sustainability_curve": sust}
            if base_utility > 0:  # ratios to the target are undefined when the target answers nothing right
                r |= {
                    "utility_ratio": r["knowmem_retain"] / base_utility,
                    "scalability": statistics.fmean(s / base_utility for s in scal),
                    "sustainability": sust[-1] / base_utility,
                }
            results[name] = r
            console.log(f"{name}: done ({clock():.0f} s)")
        doc = results_document(
            {"seed": seed, "finetune_steps": finetune_steps, "requests": REQUESTS, "methods": list(classes)},
            {k: {m: v for m, v in r.items() if not isinstance(v, list)} for k, r in results.items()},
            {k: len(v) for k, v in data.items()},
            {
                "curves": {
                    k: {c: r[c] for c in ("scalability_curve", "sustainability_curve")}
                    for k, r in results.items()
                    if "scalability_curve" in r
                },
                "wall_seconds": round(clock(), 1),
            },
        )
        write_json(o / "muse.json", doc)
    print(format_table(results))
    print(f"\nwrote {out}/muse.json; wall time {clock():.0f} s")
    return doc


COLS = [
    ("verbmem_forget", "C1 VerbMem↓"),
    ("knowmem_forget", "C2 KnowMem-f↓"),
    ("privleak", "C3 PrivLeak→0"),
    ("knowmem_retain", "C4 KnowMem-r↑"),
    ("scalability", "C5 Scal↑"),
    ("sustainability", "C6 Sust↑"),
]


def format_table(results: dict) -> str:
    head = f"{'run':12s}" + "".join(f"{label:>16s}" for _, label in COLS)
    rows = [head, "-" * len(head)]
    for run, r in results.items():
        rows.append(f"{run:12s}" + "".join(f"{r[k]:16.3f}" if k in r else f"{'-':>16s}" for k, _ in COLS))
    return "\n".join(rows)
