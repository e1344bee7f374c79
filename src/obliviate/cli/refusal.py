"""Refusal commands of the CLI: `align`, `refusal-eval`, `calibrate`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from obliviate.cli.common import BF16_OPTION, GRADIENT_CHECKPOINTING_OPTION, MAX_BATCH_TOKENS_OPTION, named_runs, parse_options, set_threads, spec_files
from obliviate.core.errors import UsageError
from obliviate.models.load import check_model_dir


def align(method: str = typer.Argument(..., help="see `obliviate ls refusal-methods`"),
          model: str = typer.Option(..., help="HF chat model directory to align (e.g. the unaligned target)"),
          out: Path = typer.Option(..., help="output model directory (never the input's)"),
          data: Optional[Path] = typer.Option(None, help="a world directory (policy_train.jsonl, train.jsonl, ...)"),
          harmful: List[str] = typer.Option([], help="KIND:FILE of prompts to refuse (repeatable), e.g. "
                                            "advbench:harmful_behaviors.csv"),
          refusals: Optional[Path] = typer.Option(None, help="one refusal per line (default: the shipped pool)"),
          harmful_responses: Optional[Path] = typer.Option(None, help="BeaverTails-like records (prompt, response):"
                                                           " harmful prefixes for DeRTa / Qi et al."),
          self_prefix: bool = typer.Option(False, "--self-prefix", help="harmful prefixes = the model's own greedy "
                                           "replies after each affirmative target (kept in OUT/generated.jsonl)"),
          benign: List[str] = typer.Option([], help="KIND:FILE of benign prompts, answered by the model itself"),
          benign_sft: Optional[Path] = typer.Option(None, help="Alpaca-style records (instruction, input, output)"),
          max_prompts: Optional[int] = typer.Option(None, help="public data: at most N prompts per source"),
          exclude: List[str] = typer.Option([], help="KIND:FILE: drop training prompts that nearly duplicate "
                                            "these (evaluation sets; word Jaccard >= 0.4)"),
          reply_tokens: int = typer.Option(64, help="public data: length of self-generated replies"),
          steps: Optional[int] = typer.Option(None, help="override the method's step count"),
          lr: Optional[float] = typer.Option(None, help="override the method's learning rate"),
          option: List[str] = typer.Option([], help="method option KEY=VALUE (repeatable), e.g. rto=false"),
          batch_size: int = typer.Option(32, help="examples per part per step"),
          lora_r: int = typer.Option(0, help="> 0: train LoRA adapters of this rank, merged on save"),
          bf16: bool = BF16_OPTION,
          gradient_checkpointing: bool = GRADIENT_CHECKPOINTING_OPTION,
          max_batch_tokens: Optional[int] = MAX_BATCH_TOKENS_OPTION,
          no_chat_template: bool = typer.Option(False, "--no-chat-template",
                                                help="raw prompts (the question and a newline), for a model with "
                                                     "or without a chat template"),
          resume: bool = typer.Option(False, help="continue from OUT/checkpoint"),
          seed: int = typer.Option(0), threads: Optional[int] = typer.Option(None)):
    """Train refusals into MODEL with one refusal method (refusal_sft, derta, qi_augment, refusal_tokens, ...),
    on a world (--data) or on public-format files (--harmful KIND:FILE, ...)."""
    from obliviate.core.outputs import check_output, output_dir

    read = (model, data, refusals, harmful_responses, benign_sft, *spec_files(harmful, benign, exclude))
    check_output(out, "align", inputs=read, resume=resume)
    from obliviate.models.load import load_model, save_model
    from obliviate.core.jsonio import write_json
    from obliviate.refusal.methods import REFUSAL_METHODS
    from obliviate.refusal.align import align as run_align

    cls = REFUSAL_METHODS.get(method)
    opts = parse_options(option) | ({"steps": steps} if steps is not None else {}) | ({"lr": lr} if lr else {})
    meth = cls.from_options(opts)
    from obliviate.engine.train import batch_token_budget

    max_batch_tokens = batch_token_budget(meth, max_batch_tokens)  # a bad budget exits before the model loads
    public = bool(harmful or harmful_responses)
    if public == (data is not None):
        raise UsageError("give either --data WORLD, or --harmful KIND:FILE / --harmful-responses FILE")
    if not public and (refusals or self_prefix or benign or benign_sft or max_prompts or exclude):
        raise UsageError("--refusals, --self-prefix, --benign, --benign-sft, --max-prompts and --exclude apply to "
                         "public data")
    if max_prompts is not None and max_prompts < 1:
        raise UsageError("--max-prompts must be >= 1")
    if lora_r < 0 or batch_size < 1 or reply_tokens < 1:
        raise UsageError("--lora-r must be >= 0, --batch-size and --reply-tokens >= 1")
    if not public:
        from obliviate.refusal.align import refusal_data

        data_, _ = refusal_data(data, seed)
    else:  # every file is checked before the model is loaded
        from obliviate.refusal.public_align import alpaca_pairs
        from obliviate.refusal.public_refusal import load_sources

        load_sources(harmful, "harmful"), load_sources(benign, "benign")
        load_sources(exclude, "harmful", allow_none=True)
        if benign_sft:
            alpaca_pairs(benign_sft)
    check_model_dir(model)
    if resume and (Path(out) / "train_log.json").is_file():
        raise UsageError(f"{out} holds a finished run; nothing to resume")
    set_threads(threads)
    from obliviate.models.prompt_format import raw_format

    net, tok = load_model(model, prompt_format=raw_format(no_chat_template))
    with output_dir(out, "align", inputs=read, resume=resume) as o:
        if public:
            from obliviate.refusal.public_align import public_refusal_data

            data_ = public_refusal_data(net, tok, harmful=harmful, refusals=refusals,
                                        harmful_responses=harmful_responses, self_prefix=self_prefix, benign=benign,
                                        benign_sft=benign_sft, max_prompts=max_prompts, seed=seed,
                                        max_new_tokens=reply_tokens, exclude=exclude, out=o)
        source = {"data": str(data)} if not public else {
            "harmful": harmful, "harmful_responses": str(harmful_responses or ""), "self_prefix": self_prefix,
            "benign": benign, "benign_sft": str(benign_sft or ""), "refusals": str(refusals or "shipped pool"),
            "exclude": exclude, "n_harmful": len(data_.harmful), "n_benign": len(data_.benign) + len(data_.people)}
        record = {"model": model, **source, "method": method, "options": meth.__dict__, "seed": seed,
                  "lora_r": lora_r, "bf16": bf16}
        if not (resume and (o / "align.json").is_file()):  # a resume rewrites it once the checkpoint is checked
            write_json(o / "align.json", record)
        from obliviate.core import checkpoint

        # the model as loaded: refusal_tokens adds tokens, whose new embedding rows start at random
        net, tok, res = run_align(net, tok, meth, data_, seed=seed, out=o, resume=resume, lora_r=lora_r,
                                  batch_size=batch_size, bf16=bf16, gradient_checkpointing=gradient_checkpointing,
                                  max_batch_tokens=max_batch_tokens, model_id=checkpoint.model_hash(net))
        write_json(o / "align.json", record)
        save_model(net, tok, o)
        write_json(o / "train_log.json", {"steps": res.steps, "seconds": res.seconds, "history": res.history})
        checkpoint.remove(o)
    typer.echo(f"{method}: {res.steps} steps in {res.seconds:.1f} s, final loss {res.history[-1]['loss']:.4f} -> {out}")


def refusal_eval_cmd(model: List[str] = typer.Option(..., help="model directory; repeat, or NAME=DIR to name runs"),
                     out: Path = typer.Option(..., help="writes results.json and samples.jsonl"),
                     data: Optional[Path] = typer.Option(None, help="a world directory (policy_test*.jsonl, ...)"),
                     harmful: List[str] = typer.Option([], help="KIND:FILE of prompts to refuse (repeatable), "
                                                       "e.g. harmbench:harmbench_behaviors_text_val.csv"),
                     benign: List[str] = typer.Option([], help="KIND:FILE of prompts to answer (repeatable), "
                                                      "e.g. xstest:xstest_prompts.csv"),
                     judges: Optional[str] = typer.Option(None, help="public sets: comma-separated judges (default: "
                                                          "the strongest installed, see `obliviate judge --help`)"),
                     depths: str = typer.Option("5,10,20", help="public sets: prefill depths in tokens"),
                     no_chat_template: bool = typer.Option(False, "--no-chat-template",
                                                           help="raw prompts (the question and a newline), for a "
                                                                "model with or without a chat template"),
                     tau: float = typer.Option(0.5, help="refusal-token models: refuse when p_refuse > tau"),
                     temperature: float = typer.Option(1.0, help="refusal-token models: softmax temperature"),
                     limit: Optional[int] = typer.Option(None, help="at most N rows per evaluation set (quick look)"),
                     max_new_tokens: int = typer.Option(48, help="reply length judged"),
                     guard: List[Path] = typer.Option([], "--guard", help="a guard directory (`obliviate guard "
                                                      "fit`) applied to every model at generation (repeatable)"),
                     seed: int = typer.Option(0), threads: Optional[int] = typer.Option(None)):
    """Refusal, over-refusal and refusal at prefill depths: on a world (--data), or on public prompt sets
    (--harmful / --benign KIND:FILE, per category), for any chat model."""
    from obliviate.core.outputs import check_output, output_dir

    runs = named_runs(model)
    read = (*runs.values(), data, *spec_files(harmful, benign), *guard)
    check_output(out, "refusal-eval", inputs=read)
    from obliviate.guards.base import check_guard_dirs

    check_guard_dirs(guard)
    from obliviate.data.schema import write_jsonl
    from obliviate.models.load import load_model
    from obliviate.runs.results import results_document
    from obliviate.core.jsonio import write_json
    from obliviate.refusal.methods.refusal_tokens import ThresholdGenerator
    from obliviate.models.control_tokens import control_ids

    public = bool(harmful or benign)
    if public == (data is not None):
        raise UsageError("give either --data WORLD, or --harmful / --benign KIND:FILE prompt sets")
    if limit is not None and limit < 1:
        raise UsageError("--limit must be >= 1")
    if max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be >= 1")
    for path in runs.values():
        check_model_dir(path)
    if public:
        from obliviate.judges.default import make_judge
        from obliviate.refusal.public_refusal import evaluate_public, load_sources, subsample_per_source

        depth_list = parse_depths(depths)
        rows = subsample_per_source(load_sources(harmful, "harmful") + load_sources(benign, "benign"), limit)
        judge = make_judge([j.strip() for j in judges.split(",") if j.strip()] if judges else None)
        config = {"suite": "public", "harmful": harmful, "benign": benign, "judges": judge.names,
                  "depths": list(depth_list)}
    else:
        from obliviate.refusal.align import evaluate, refusal_data

        if judges:
            raise UsageError("--judges applies to public prompt sets; the world suite uses its keyword judges")
        _, eval_people = refusal_data(data, seed)
        config = {"suite": "refusal", "data": str(data)}
    gen = ThresholdGenerator(tau, temperature)
    from obliviate.guards.base import attach_guards
    from obliviate.models.prompt_format import raw_format

    fmt = raw_format(no_chat_template)
    set_threads(threads)
    with output_dir(out, "refusal-eval", inputs=read) as o:
        results, samples, extra = {}, [], {}
        for name, path in runs.items():
            net, tok = load_model(path, prompt_format=fmt)
            attach_guards(net, tok, [str(g) for g in guard])
            g = gen if control_ids(tok)[0] is not None else None
            if public:
                m, s, e = evaluate_public(net, tok, rows, judge.refused, depths=depth_list,
                                          max_new_tokens=max_new_tokens, generator=g)
            else:
                m, s, d = evaluate(net, tok, data, eval_people, seed, g, max_new_tokens, limit)
                e = {"refusal_positions": d}
            results[name] = m
            for key, value in e.items():
                extra.setdefault(key, {})[name] = value
            samples += [x | {"run": name} for x in s]
            typer.echo(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items() if v is not None))
            for kind, rates in e.get("by_category", {}).items():
                typer.echo(f"  {kind:8s} " + ", ".join(f"{c} {v:.2f}" for c, v in rates.items()))
        doc = results_document(config | {"models": runs, "guards": [str(g) for g in guard], "tau": tau, "temperature": temperature, "limit": limit,
                                         "max_new_tokens": max_new_tokens} | (fmt.config() if fmt else {}),
                               results, {}, extra)
        write_jsonl(o / "samples.jsonl", samples)
        write_json(o / "results.json", doc)
    typer.echo(f"wrote {out}/results.json, samples.jsonl")
    from obliviate.report.html import write_beside  # OUT/report.html; a failed report only warns

    write_beside(out)


def parse_depths(text: str) -> tuple[int, ...]:
    try:
        depths = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--depths must be comma-separated integers, got {text!r}") from None
    if any(d < 1 for d in depths):
        raise UsageError(f"--depths must be >= 1, got {text!r}")
    return depths


def calibrate(model: str = typer.Argument(..., help="a model trained with `obliviate align refusal_tokens`"),
              data: Path = typer.Option(..., help="directory with the policy split to calibrate on"),
              out: Path = typer.Option(..., help="writes calibration.json and calibration.png"),
              split: str = typer.Option("policy_test", help="policy split (harmful + benign rows)"),
              taus: Optional[str] = typer.Option(None, help="comma-separated thresholds in [0, 1]"),
              temperature: float = typer.Option(1.0, help="softmax temperature of p_refuse"),
              limit: Optional[int] = typer.Option(None, help="at most N rows (quick look)"),
              threads: Optional[int] = typer.Option(None)):
    """Sweep the refusal-token threshold tau: refusal rate vs over-refusal rate (JSON + PNG)."""
    from obliviate.core.outputs import check_output, output_dir

    check_output(out, "calibrate", inputs=(model, data))
    from obliviate.refusal.calibrate import parse_taus, plot, sweep
    from obliviate.models.load import load_model
    from obliviate.core.jsonio import write_json
    from obliviate.models.control_tokens import control_ids
    from obliviate.refusal.align import policy_rows

    tau_list = parse_taus(taus)
    if temperature <= 0:
        raise UsageError(f"--temperature must be > 0, got {temperature}")
    if limit is not None and limit < 1:
        raise UsageError("--limit must be >= 1")
    rows = policy_rows(data, split)
    check_model_dir(model)
    set_threads(threads)
    if limit:
        from obliviate.refusal.align import subsample

        rows = subsample(rows, limit)
    net, tok = load_model(model, require_chat_template=True)
    if control_ids(tok)[0] is None:
        raise UsageError(f"{model} has no refusal tokens; train one with `obliviate align refusal_tokens`")
    with output_dir(out, "calibrate", inputs=(model, data)) as o:
        curve = sweep(net, tok, rows, tau_list, temperature) | {"model": model, "split": split}
        write_json(o / "calibration.json", curve)
        plot(curve, o / "calibration.png")
    for t, r, v in zip(curve["tau"], curve["refusal_rate"], curve["over_refusal_rate"]):
        typer.echo(f"tau {t:<6g} refusal {r:.3f}  over-refusal {v:.3f}")
    typer.echo(f"wrote {out}/calibration.json, calibration.png")
