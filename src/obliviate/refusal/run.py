"""The refusal runners as the commands run them: `align` (one refusal method, a model directory out) and
`refusal-eval` (refusal, over-refusal and refusal at prefill depths of named models, results.json out).

Both read a world (`data`: policy_train / policy_test splits, people facts) or public-format prompt files
(`harmful` / `benign` as KIND:FILE specs, e.g. "advbench:harmful_behaviors.csv"), check every input before a
model loads, and are also the Python API (`obliviate.align`, `obliviate.refusal_eval`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from obliviate.core.errors import UsageError
from obliviate.core.jsonio import write_json
from obliviate.core.outputs import check_output, output_dir
from obliviate.unlearning.run import check_resumable, save_trained, write_record

if TYPE_CHECKING:
    from obliviate.engine.train import TrainResult


def _files(*specs: Sequence[str]) -> list[str]:
    """The FILE of each KIND:FILE spec: what the run reads, for the output checks."""
    return [spec.split(":", 1)[-1] for group in specs for spec in group]


def run_align(
    model: str,
    method: str,
    out: Path,
    *,
    data: Path | None = None,
    harmful: Sequence[str] = (),
    refusals: Path | None = None,
    harmful_responses: Path | None = None,
    self_prefix: bool = False,
    benign: Sequence[str] = (),
    benign_sft: Path | None = None,
    max_prompts: int | None = None,
    exclude: Sequence[str] = (),
    reply_tokens: int = 64,
    options: dict | None = None,
    batch_size: int = 32,
    lora_r: int = 0,
    bf16: bool = False,
    gradient_checkpointing: bool = False,
    max_batch_tokens: int | None = None,
    no_chat_template: bool = False,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    utility=None,
) -> TrainResult:
    """Train refusals into `model` with one refusal method: what `obliviate align` runs, and `obliviate.align`.

    Args:
        model: an HF chat model directory (e.g. the world's unaligned target).
        method: a refusal method (`obliviate ls refusal-methods`: refusal_sft, derta, qi_augment,
            refusal_tokens, ...); `options` its options, e.g. {"steps": 40, "lr": 1e-4, "rto": "false"}.
        out: the new model directory (never the input's; refused if it holds anything else).
        data: a world directory (policy_train.jsonl, train.jsonl, holdout.jsonl). Or, instead, public data:
            `harmful` KIND:FILE prompts to refuse and/or `harmful_responses` (BeaverTails-like prompt/response
            records, the harmful prefixes of DeRTa / Qi et al.), with `refusals` (one per line; default: the
            shipped pool), `self_prefix` (the model's own greedy replies after each affirmative target as
            prefixes), `benign` KIND:FILE prompts answered by the model itself, `benign_sft` Alpaca-style records,
            `max_prompts` per source, `exclude` KIND:FILE evaluation sets whose near-duplicates are dropped and
            `reply_tokens` (the length of self-generated replies).
        batch_size, lora_r, bf16, gradient_checkpointing, max_batch_tokens: training (`TrainConfig`);
            `max_batch_tokens` None is the default budget where the method's loss splits.
        no_chat_template: raw prompts (the question and a newline) instead of the model's chat template.
        resume: continue from OUT/checkpoint/ (refused when OUT holds a finished run).
        utility: an `obliviate.engine.utility.UtilitySpec` (`--utility lm-eval:TASKS`): lm-eval's figures of the
            aligned model in train_log.json["utility"] (values, stderr, n, config).

    Writes OUT: the HF model (merged LoRA adapters when `lora_r` > 0), align.json (inputs, method, options),
    train_log.json (steps, seconds, loss history) and, for public data, the generated replies it trained on.
    Returns the `TrainResult` (steps, seconds, history)."""
    from obliviate.core import checkpoint
    from obliviate.engine.train import batch_token_budget
    from obliviate.models.load import check_model_dir, load_model
    from obliviate.models.prompt_format import raw_format
    from obliviate.refusal.align import align, refusal_data
    from obliviate.refusal.methods import REFUSAL_METHODS
    from obliviate.refusal.public_align import alpaca_pairs, public_refusal_data
    from obliviate.refusal.public_refusal import load_sources

    harmful, benign, exclude = list(harmful), list(benign), list(exclude)
    read = (model, data, refusals, harmful_responses, benign_sft, *_files(harmful, benign, exclude))
    check_output(out, "align", inputs=read, resume=resume)
    meth = REFUSAL_METHODS.get(method).from_options(options or {})
    max_batch_tokens = batch_token_budget(meth, max_batch_tokens)  # a bad budget fails before the model loads
    public = bool(harmful or harmful_responses)
    if public == (data is not None):
        raise UsageError("give either --data WORLD, or --harmful KIND:FILE / --harmful-responses FILE")
    if not public and (refusals or self_prefix or benign or benign_sft or max_prompts or exclude):
        raise UsageError(
            "--refusals, --self-prefix, --benign, --benign-sft, --max-prompts and --exclude apply to public data"
        )
    if max_prompts is not None and max_prompts < 1:
        raise UsageError("--max-prompts must be >= 1")
    if lora_r < 0 or batch_size < 1 or reply_tokens < 1:
        raise UsageError("--lora-r must be >= 0, --batch-size and --reply-tokens >= 1")
    if not public:
        data_, _ = refusal_data(data, seed)
    else:  # every file is checked before the model is loaded
        load_sources(harmful, "harmful"), load_sources(benign, "benign")
        load_sources(exclude, "harmful", allow_none=True)
        if benign_sft:
            alpaca_pairs(benign_sft)
    check_model_dir(model)
    check_resumable(out, resume)
    from obliviate.engine.utility import check_utility

    utility = check_utility(utility)  # an unknown task or a missing dataset fails before training
    net, tok = load_model(model, prompt_format=raw_format(no_chat_template))
    with output_dir(out, "align", inputs=read, resume=resume) as o:
        if public:
            data_ = public_refusal_data(
                net,
                tok,
                harmful=harmful,
                refusals=refusals,
                harmful_responses=harmful_responses,
                self_prefix=self_prefix,
                benign=benign,
                benign_sft=benign_sft,
                max_prompts=max_prompts,
                seed=seed,
                max_new_tokens=reply_tokens,
                exclude=exclude,
                out=o,
            )
        source = (
            {"data": str(data)}
            if not public
            else {
                "harmful": harmful,
                "harmful_responses": str(harmful_responses or ""),
                "self_prefix": self_prefix,
                "benign": benign,
                "benign_sft": str(benign_sft or ""),
                "refusals": str(refusals or "shipped pool"),
                "exclude": exclude,
                "n_harmful": len(data_.harmful),
                "n_benign": len(data_.benign) + len(data_.people),
            }
        )
        record = {
            "model": str(model),
            **source,
            "method": method,
            "options": meth.__dict__,
            "seed": seed,
            "lora_r": lora_r,
            "bf16": bf16,
        }
        write_record(o, "align.json", record, resume)
        # the model as loaded: refusal_tokens adds tokens, whose new embedding rows start at random
        net, tok, res = align(
            net,
            tok,
            meth,
            data_,
            seed=seed,
            progress=progress,
            out=o,
            resume=resume,
            lora_r=lora_r,
            batch_size=batch_size,
            bf16=bf16,
            gradient_checkpointing=gradient_checkpointing,
            max_batch_tokens=max_batch_tokens,
            model_id=checkpoint.model_hash(net),
        )
        save_trained(
            o,
            net,
            tok,
            "align.json",
            record,
            {"steps": res.steps, "seconds": res.seconds, "history": res.history},
            utility,
            seed,
        )
    return res


def parse_depths(depths: str | Sequence[int]) -> tuple[int, ...]:
    """Prefill depths in tokens: a comma-separated string ("5,10,20") or a sequence of ints, each >= 1."""
    try:
        got = tuple(int(x) for x in (depths.split(",") if isinstance(depths, str) else depths) if str(x).strip())
    except ValueError:
        raise UsageError(f"--depths must be comma-separated integers, got {depths!r}") from None
    if any(d < 1 for d in got):
        raise UsageError(f"--depths must be >= 1, got {depths!r}")
    return got


NO_PREFILL = (
    "refusal at prefill depths not measured: an endpoint is sent text, and no --tokenizer was given to cut the "
    "first k tokens of each answer"
)


def run_refusal_eval(
    models: dict[str, str],
    out: Path,
    *,
    data: Path | None = None,
    harmful: Sequence[str] = (),
    benign: Sequence[str] = (),
    judges: Sequence[str] | None = None,
    depths: str | Sequence[int] = "5,10,20",
    no_chat_template: bool = False,
    tau: float = 0.5,
    tau_temperature: float = 1.0,
    limit: int | None = None,
    max_new_tokens: int = 48,
    guards: Sequence[str | Path] = (),
    seed: int = 0,
    log: Callable[[str], object] | None = print,
    samples: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
    served_model: str | None = None,
    api_key_env: str | None = None,
    concurrency: int = 4,
    tokenizer: str | Path | None = None,
    harm_judge=None,
    utility=None,
) -> dict:
    """Refusal, over-refusal and refusal at prefill depths of each model: what `obliviate refusal-eval` runs, and
    `obliviate.refusal_eval`.

    Args:
        models: {run name: model directory, or `openai:URL` (an OpenAI-compatible endpoint, URL ending in /v1)};
            every model is judged on the same rows.
        served_model, api_key_env, concurrency: for endpoints, the served model's name (default: the one the
            endpoint lists), the environment variable holding the API key, and the requests in flight at once.
        tokenizer: an endpoint's tokenizer directory: prefills are its first k tokens of the answer, sent as text;
            without one, an endpoint's refusal at prefill depths is not measured (and config says so).
        out: the results directory (refused if it holds anything else).
        data: a world directory (policy_test, policy_test_heldout, people facts: the world suite with its keyword
            judges); or, instead, public prompt sets `harmful` / `benign` as KIND:FILE specs (per-category and
            per-source rates, judged by `judges`: default the strongest installed) at prefill `depths`.
        no_chat_template: raw prompts (the question and a newline) for every model.
        tau, tau_temperature: refusal-token models refuse when p_refuse > tau (softmax at `tau_temperature`).
        samples, temperature, top_p, seed: N replies per prompt, sampled at `temperature` (default 1.0 once N > 1)
            and `top_p`, reply j with seed `seed + j`; N = 1 with neither set is greedy decoding. With N > 1 each
            rate is per reply, and `refusal_rate@all{N}` / `over_refusal_rate@any{N}` add the worst case over a
            prompt's N replies (`obliviate.refusal.evaluate`).
        limit: at most N rows per evaluation set (a quick look); `max_new_tokens`: the reply length judged.
        guards: guard directories (`obliviate guard fit`) applied to every model at generation.
        log: where each model's one-line summary goes (None: nowhere).
        harm_judge: a harm judge (`obliviate.judges.harm.make_harm_judge`) of the direct replies to harmful
            prompts: `harmful_rate` (and `harm_score`, `harmful_rate_corrected` with labels) per run, the judge
            and its agreement in config["harm_judge"], each verdict in samples.jsonl ("harm").
        utility: an `obliviate.engine.utility.UtilitySpec` (`--utility lm-eval:TASKS`): lm-eval's figures of each
            local model (`utility/<task>/<metric>` in its run, config["utility"], n_samples["utility/<task>"]).

    Writes OUT/results.json (the results schema: config, results {run: metrics}, plus refusal_positions,
    intervals {run: {metric: n and 95% bootstrap interval}} and, for public sets, by_category / by_source) and
    OUT/samples.jsonl (every prompt, reply and judgement; "sample" is the reply's index among its prompt's N).
    Returns the results.json document."""
    from obliviate.data.schema import write_jsonl
    from obliviate.engine.sampling import sampling_for
    from obliviate.guards.base import attach_guards, check_guard_dirs
    from obliviate.metrics.intervals import format_interval
    from obliviate.models.control_tokens import control_ids
    from obliviate.models.load import check_model_dir, load_model
    from obliviate.models.prompt_format import raw_format
    from obliviate.models.remote import RemoteModel, is_remote, load_tokenizer
    from obliviate.refusal.align import evaluate, refusal_data, world_intervals
    from obliviate.refusal.methods.refusal_tokens import ThresholdGenerator
    from obliviate.runs.results import results_document

    models, guards = {name: str(path) for name, path in models.items()}, [str(g) for g in guards]
    harmful, benign = list(harmful), list(benign)
    remote = {name: path for name, path in models.items() if is_remote(path)}
    local = [path for path in models.values() if not is_remote(path)]
    read = (*local, data, *_files(harmful, benign), *guards, *([tokenizer] if tokenizer else []))
    check_output(out, "refusal-eval", inputs=read)
    if not remote and (served_model or api_key_env or tokenizer):
        raise UsageError("--served-model, --api-key-env and --tokenizer apply to an openai:URL model")
    if remote and (guards or no_chat_template):
        raise UsageError("--guard and --no-chat-template apply to local models: an endpoint uses its own chat template")
    check_guard_dirs(guards)
    public = bool(harmful or benign)
    if public == (data is not None):
        raise UsageError("give either --data WORLD, or --harmful / --benign KIND:FILE prompt sets")
    if limit is not None and limit < 1:
        raise UsageError("--limit must be >= 1")
    if max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be >= 1")
    sampling_for(samples, temperature, top_p, seed)  # a bad --samples / --temperature / --top-p fails here
    draw = {"samples": samples, "temperature": temperature, "top_p": top_p}
    for path in local:
        check_model_dir(path)
    from obliviate.engine.utility import (
        add_utility,
        check_utility,
        check_utility_models,
        run_utility,
        utility_config,
        utility_counts,
        utility_lines,
    )

    check_utility_models(utility, models)  # lm-eval scores weights: an endpoint is refused here
    utility = check_utility(utility)  # an unknown task or a missing dataset fails before a model loads
    found = {}
    # endpoints are checked (reachable, key accepted, model served) before anything is written
    endpoints = {name: RemoteModel(p, served_model, api_key_env, concurrency) for name, p in remote.items()}
    remote_tok = load_tokenizer(tokenizer) if tokenizer else None
    if public:
        from obliviate.judges.default import make_judge
        from obliviate.refusal.public_refusal import evaluate_public, load_sources, subsample_per_source

        depth_list = parse_depths(depths)
        rows = subsample_per_source(load_sources(harmful, "harmful") + load_sources(benign, "benign"), limit)
        judge = make_judge([j.strip() for j in judges if j.strip()] if judges else None)
        config = {
            "suite": "public",
            "harmful": harmful,
            "benign": benign,
            "judges": judge.names,
            "depths": list(depth_list),
        }
    else:
        if judges:
            raise UsageError("--judges applies to public prompt sets; the world suite uses its keyword judges")
        _, eval_people = refusal_data(data, seed)
        config = {"suite": "refusal", "data": str(data)}
    gen = ThresholdGenerator(tau, tau_temperature)
    fmt = raw_format(no_chat_template)
    log = log or (lambda _: None)
    if endpoints:
        config["served_models"] = {name: e.name for name, e in endpoints.items()}
        if remote_tok is None:
            config["prefill"] = NO_PREFILL
            log(f"{', '.join(endpoints)}: {NO_PREFILL}")
    with output_dir(out, "refusal-eval", inputs=read) as o:
        results, records, extra = {}, [], {}
        for name, path in models.items():
            if name in endpoints:
                net, tok, g = endpoints[name], remote_tok, None
            else:
                net, tok = load_model(path, prompt_format=fmt)
                if utility:  # the bare model: guards act in obliviate's decode loop, not in lm-eval's passes
                    found[name] = run_utility(net, tok, utility, name, seed)
                attach_guards(net, tok, guards)
                g = gen if control_ids(tok)[0] is not None else None
            if public:
                m, s, e = evaluate_public(
                    net,
                    tok,
                    rows,
                    judge.refused,
                    depths=depth_list,
                    max_new_tokens=max_new_tokens,
                    generator=g,
                    seed=seed,
                    **draw,
                )
            else:
                m, s, d = evaluate(net, tok, data, eval_people, seed, g, max_new_tokens, limit, **draw)
                e = {"refusal_positions": d, "intervals": world_intervals(s, seed=seed)}
            results[name] = m
            for key, value in e.items():
                extra.setdefault(key, {})[name] = value
            records += [x | {"run": name} for x in s]
            log(f"{name}:")
            for k, v in m.items():
                if v is not None:
                    log(f"  {k:32s} {format_interval(e['intervals'].get(k), v)}")
            for kind, rates in e.get("by_category", {}).items():
                log(f"  {kind:8s} " + ", ".join(f"{c} {v:.2f}" for c, v in rates.items()))
            if name in found:
                add_utility(found[name], name, results, extra.setdefault("intervals", {}))
                for line in utility_lines(found[name]):
                    log(f"  {line}")
        if harm_judge is not None:  # one batch over every run's direct replies to harmful prompts
            from obliviate.judges.harm import score_samples

            config["harm_judge"], harm_iv = score_samples(harm_judge, results, records, seed)
            for name, ivs in harm_iv.items():
                extra.setdefault("intervals", {}).setdefault(name, {}).update(ivs)
                shown = {
                    k: format_interval(v if v.get("lo") is not None else None, v.get("value")) for k, v in ivs.items()
                }
                unparsed = results[name].get("harmful_rate_unparsed")
                shown["unparsed"] = "-" if unparsed is None else f"{unparsed:.3f}"
                log(f"{name}: by {harm_judge.name}, " + ", ".join(f"{k} {t}" for k, t in shown.items()))
        doc = results_document(
            config
            | {
                "models": models,
                "guards": guards,
                "tau": tau,
                "tau_temperature": tau_temperature,
                "samples": samples,
                "temperature": temperature,
                "top_p": top_p,
                "seed": seed,
                "limit": limit,
                "max_new_tokens": max_new_tokens,
            }
            | (fmt.config() if fmt else {})
            | ({"utility": utility_config(utility, found)} if utility else {}),
            results,
            utility_counts(found),
            extra,
        )
        write_jsonl(o / "samples.jsonl", records)
        write_json(o / "results.json", doc)
    return doc
