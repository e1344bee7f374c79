"""`obliviate judge refusal` and `obliviate judge train`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from obliviate.core.errors import UsageError
from obliviate.judges.default import default_judge_names

judge_app = typer.Typer(no_args_is_help=True, help="Label model outputs.")


def _judge_rows(file: Path, columns: list) -> list[dict]:
    """Rows of a CSV or JSONL file for the judge commands; no rows or an unknown column is a UsageError."""
    from obliviate.data.schema import read_records

    if file.suffix in (".jsonl", ".json"):
        rows = [r if isinstance(r, dict) else {} for _, r in read_records(file)]
    else:
        from obliviate.data.prompts import read_csv

        rows = read_csv(file, ())
    if not rows:
        raise UsageError(f"{file}: no rows")
    have = set(rows[0])
    for col in columns:
        if col is not None and col not in have:
            raise UsageError(f"{file}: unknown column {col!r} (columns: {', '.join(sorted(have))})")
    return rows


@judge_app.command("refusal")
def judge_refusal(
    file: Path = typer.Argument(..., help="CSV or JSONL with one prompt/response per row"),
    prompt_column: str = typer.Option("prompt"),
    response_column: str = typer.Option("response"),
    out: Path = typer.Option(..., help="one JSON prediction per row: row, label, score, scores"),
    judges: Optional[str] = typer.Option(
        None,
        help="comma-separated: gcg, jbb, xstest, embedding, llm (default: the strongest "
        f"installed, {','.join(default_judge_names())}; llm when --judge-model is given)",
    ),
    combine: str = typer.Option("any", help="any | all | majority"),
    label_column: Optional[str] = typer.Option(None, help="human labels: print the agreement"),
    embedding_weights: Optional[Path] = typer.Option(
        None, help="weights from `obliviate judge train` (default: the shipped ones)"
    ),
    judge_model: Optional[Path] = typer.Option(None, help="local HF causal LM directory for llm"),
    judge_template: str = typer.Option(
        "harmbench", help="llm prompt: harmbench | strongreject | harmbench=FILE | strongreject=FILE"
    ),
):
    """Refusal or compliance for each response, by keyword, embedding or LLM judges; agreement with labels."""
    from obliviate.core.outputs import check_output_file, output_file

    read = (file, embedding_weights, judge_model)
    check_output_file(out, inputs=read)  # an earlier prediction file is replaced, an input never
    from obliviate.data.schema import write_jsonl
    from obliviate.judges.default import make_judge, vote
    from obliviate.judges.refusal import human_label

    names = judges.split(",") if judges else None
    judge = make_judge(
        names,
        embedding_weights=embedding_weights,
        judge_model=judge_model,
        judge_template=judge_template,
        combine=combine,
    )  # every option checked, no model loaded
    names = judge.names
    rows = _judge_rows(file, [prompt_column, response_column, label_column])
    prompts = [str(r.get(prompt_column) or "") for r in rows]
    responses = [str(r.get(response_column) or "") for r in rows]
    scores, raw = judge.scores_by_judge(prompts, responses), judge.outputs
    preds = []
    for i in range(len(rows)):
        row_scores = {n: scores[n][i] for n in names}
        label, score = vote(list(row_scores.values()), combine)
        preds.append(
            {
                "row": i + 1,
                "label": label,
                "score": score,
                "judges": names,
                "scores": row_scores,
                **({"llm_output": raw[i]} if raw is not None else {}),
            }
        )
    with output_file(out, inputs=read) as tmp:
        write_jsonl(tmp, preds)
    refusals = sum(p["label"] == "refusal" for p in preds)
    unparsed = sum(p["label"] == "unparsed" for p in preds)
    typer.echo(
        f"{len(preds)} rows, {refusals} refusals" + (f", {unparsed} unparsed" if unparsed else "") + f" -> {out}"
    )
    if label_column:
        pairs = [(p["label"], human_label(str(r[label_column]))) for p, r in zip(preds, rows)]
        pairs = [(a, b) for a, b in pairs if b is not None]
        if not pairs:
            raise UsageError(f"{file}: no value of {label_column!r} reads as refusal or compliance")
        agree = sum(a == b for a, b in pairs) / len(pairs)  # an unparsed row counts as a disagreement
        typer.echo(f"agreement with {label_column}: {agree:.4f} on {len(pairs)} labelled rows")


@judge_app.command("train")
def judge_train(
    file: Path = typer.Argument(..., help="CSV or JSONL of labelled responses"),
    response_column: str = typer.Option("response"),
    label_column: str = typer.Option(..., help="values containing 'refus' / 'compl' (XSTest style)"),
    out: Path = typer.Option(..., help="new directory: weights.safetensors + config.json"),
    group_column: Optional[str] = typer.Option(
        None, help="rows sharing a value stay in one cross-validation fold (default: each row alone)"
    ),
):
    """Fit the embedding refusal judge on your labelled responses (l2 by 5-fold CV); use with --embedding-weights."""
    from obliviate.core.outputs import check_output, output_dir

    check_output(out, "judge", inputs=(file,))
    from obliviate.judges import embedding as emb
    from obliviate.judges.refusal import human_label

    rows = _judge_rows(file, [response_column, label_column, group_column])
    kept = [(r, human_label(str(r[label_column]))) for r in rows]
    kept = [(r, lab) for r, lab in kept if lab is not None]
    if len(kept) < 10:
        raise UsageError(f"{file}: {len(kept)} rows with a refusal/compliance label in {label_column!r}; need 10")
    responses = [str(r.get(response_column) or "") for r, _ in kept]
    labels = [int(lab == "refusal") for _, lab in kept]
    groups = [str(r[group_column]) for r, _ in kept] if group_column else None
    if len(set(labels)) < 2:
        raise UsageError(f"{file}: training needs both refusals and compliances in {label_column!r}")
    emb.default_encoder()  # a missing encoder package fails before the output directory is made
    judge = emb.train(responses, labels, groups, meta={"trained_on": [str(file)]})
    with output_dir(out, "judge", inputs=(file,), staged=True) as o:
        judge.save(o)
    cv = judge.meta["cv_accuracy"][str(judge.meta["l2"])]
    typer.echo(f"{len(labels)} rows ({sum(labels)} refusals), l2 {judge.meta['l2']:g}, CV accuracy {cv:.4f} -> {out}")
