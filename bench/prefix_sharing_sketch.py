"""Sketch of a faster `score_model` (issue #9, part 9): what pooling splits and sharing the prompt would save.

Not a change to obliviate: it times, on the same items and in the same process (interleaved, medians),

  ours      `obliviate.evaluate._forward_stats` over every item's answer, paraphrase and perturbed answers
            (5 full sequences per item, vocab-wide log-softmax / Min-K%++ / argmax at every position), and
            `obliviate.generation.generate` called once per split, as `score_model` does today;
  sketch    per item, one forward pass over the prompt (KV cache, last-position logits only), then the K
            answers as a batch of K continuations of that cache, log-softmax only at answer positions and
            Min-K%++ / argmax only for the true answer; and one `generate` call over all splits pooled.

It prints both, the per-part split, and the largest difference of the statistics the metrics read (losses,
token log-probs, Min-K%++ z-scores; greedy predictions must be identical).

    python bench/prefix_sharing_sketch.py [--per-split 6] [--repeats 2] [--max-new-tokens 48]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent


def prefix_stats(model, tok, items) -> list[list[dict]]:
    """Per item, [true answer, paraphrase, *perturbed] stats from one prompt pass + one batched continuation."""
    import torch

    from obliviate.metrics.mia import minkpp_token_z
    from obliviate.models.encode import answer_ids, prompt_ids

    out = []
    with torch.no_grad():
        for it in items:
            p = prompt_ids(tok, it.question)
            answers = [answer_ids(tok, a) for a in [it.answer, it.paraphrased_answer, *it.perturbed_answer]]
            K, A = len(answers), max(map(len, answers))
            first = model(input_ids=torch.tensor([p]), use_cache=True, logits_to_keep=1)
            cache = first.past_key_values
            cache.batch_repeat_interleave(K)
            ids = torch.full((K, A), tok.pad_token_id)
            mask = torch.ones((K, len(p) + A), dtype=torch.long)
            for k, a in enumerate(answers):
                ids[k, : len(a)] = torch.tensor(a)
                mask[k, len(p) + len(a):] = 0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # the past_key_values keyword's new name
                logits = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], past_key_values=cache).logits
            logits = torch.cat([first.logits[:, -1:].expand(K, 1, -1), logits], 1)  # position j predicts ids[:, j]
            rows = []
            for k, a in enumerate(answers):
                x, t = logits[k, : len(a)].float(), ids[k, : len(a)]
                lp = torch.log_softmax(x, -1)
                tl = lp.gather(-1, t[:, None])[:, 0]
                r = {"loss": float(-tl.mean())}
                if k == 0:
                    r.update(token_logps=tl.tolist(), token_z=minkpp_token_z(lp, t).tolist(),
                             pred_ids=x.argmax(-1).tolist())
                rows.append(r)
            out.append(rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    ap.add_argument("--per-split", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from obliviate.data.world import write_world
    from obliviate.evaluate import _forward_stats
    from obliviate.generation import generate
    from obliviate.models.encode import encode_pair, prompt_ids
    from obliviate.models.load import load_model
    from obliviate.pipeline import eval_data

    model, tok = load_model(args.model)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        write_world(tmp)
        data = {s: v[: args.per_split] for s, v in eval_data(Path(tmp)).items()}
    items = [it for v in data.values() for it in v]
    seqs = {s: [encode_pair(tok, it.question, a) for it in v for a in [it.answer, it.paraphrased_answer,
                                                                        *it.perturbed_answer]] for s, v in data.items()}
    prompts = {s: [prompt_ids(tok, it.question) for it in v] for s, v in data.items()}
    pad, mnt = tok.pad_token_id, args.max_new_tokens

    parts = {
        "ours: forward stats": lambda: {s: _forward_stats(model, q, pad, 64) for s, q in seqs.items()},
        "ours: generate per split": lambda: {s: generate(model, tok, p, mnt, 64) for s, p in prompts.items()},
        "sketch: prefix-shared stats": lambda: prefix_stats(model, tok, items),
        "sketch: generate pooled": lambda: generate(model, tok, [p for v in prompts.values() for p in v], mnt, 64),
    }
    prefix_stats(model, tok, items[:1])  # warm-up
    _forward_stats(model, seqs["forget"][:5], pad, 64)
    cpu, res = {k: [] for k in parts}, {}
    for _ in range(args.repeats):
        for k, f in parts.items():
            c = time.process_time()
            res[k] = f()
            cpu[k].append(time.process_time() - c)
    med = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"model {Path(args.model).name}: {len(items)} items ({args.per_split} per split), max_new_tokens={mnt}, "
          f"threads={args.threads}, CPU seconds, median of {args.repeats} interleaved repeats")
    for k, v in med.items():
        print(f"  {k:30s} {v:7.2f} s")
    ours = med["ours: forward stats"] + med["ours: generate per split"]
    sketch = med["sketch: prefix-shared stats"] + med["sketch: generate pooled"]
    print(f"  ours {ours:.2f} s ({len(items) / ours:.2f} samples/s), sketch {sketch:.2f} s "
          f"({len(items) / sketch:.2f} samples/s): {ours / sketch:.2f}x")

    full = [r for s in data for r in res["ours: forward stats"][s]]
    diff, same_pred, off = 0.0, True, 0
    for rows in res["sketch: prefix-shared stats"]:
        for k, r in enumerate(rows):
            f = full[off + k]
            diff = max(diff, abs(r["loss"] - f["loss"]))
            if k == 0:
                diff = max(diff, *(abs(x - y) for x, y in zip(r["token_logps"], f["token_logps"])),
                           *(abs(x - y) for x, y in zip(r["token_z"], f["token_z"])))
                same_pred &= r["pred_ids"] == f["pred_ids"]
        off += len(rows)
    gen_same = [x for s in data for x in res["ours: generate per split"][s]] == res["sketch: generate pooled"]
    print(f"  max |sketch - ours| over losses, token log-probs and Min-K%++ z: {diff:.1e}; greedy predictions "
          f"identical: {same_pred}; pooled generations identical: {gen_same}")


if __name__ == "__main__":
    main()
