"""`obliviate calibrate`: sweep the refusal-token threshold tau and trace refusal rate against over-refusal rate.

For a model trained with refusal tokens (Jain et al. 2024, arXiv:2412.06748, Sec. 3 "thresholding"), the reply to
a prompt depends on tau only through the first token: a refusal token when p_refuse > tau, else `[respond]`. So each
prompt is decoded twice (forced refusal token, forced respond token), both replies are judged once, and every tau
then reads its rates off p_refuse without decoding again: the curve is exact, not interpolated.
"""

from __future__ import annotations

from pathlib import Path

from obliviate.core.errors import UsageError
from obliviate.core.jsonio import write_json
from obliviate.core.outputs import check_output, output_dir

DEFAULT_TAUS = (0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)


def sweep(
    model,
    tok,
    rows: list[dict],
    taus=DEFAULT_TAUS,
    temperature: float = 1.0,
    judges=("gcg", "jbb"),
    max_new_tokens: int = 48,
) -> dict:
    """{"tau": [...], "refusal_rate": [...], "over_refusal_rate": [...]} on harmful / benign policy rows."""
    from obliviate.engine.generation import generate
    from obliviate.judges.refusal import judge
    from obliviate.models.control_tokens import control_ids
    from obliviate.models.encode import prompt_ids
    from obliviate.refusal.methods.refusal_tokens import ThresholdGenerator, refuse_probability

    harmful = [r for r in rows if r["kind"] == "harmful"]
    benign = [r for r in rows if r["kind"] == "benign"]
    if not harmful or not benign:
        raise UsageError("calibration needs harmful and benign rows")
    respond, _ = control_ids(tok)
    prompts = [prompt_ids(tok, r["prompt"]) for r in harmful + benign]
    p_refuse = refuse_probability(model, tok, prompts, temperature).tolist()
    refuse_tok = ThresholdGenerator(tau=0.0, temperature=temperature).decisions(model, tok, prompts)
    replies = {
        "refuse": generate(model, tok, [p + [t] for p, t in zip(prompts, refuse_tok)], max_new_tokens=max_new_tokens),
        "respond": generate(model, tok, [p + [respond] for p in prompts], max_new_tokens=max_new_tokens),
    }
    refused = {k: [judge("", o, list(judges))[0] == "refusal" for o in v] for k, v in replies.items()}
    nh = len(harmful)
    out = {"tau": list(taus), "temperature": temperature, "refusal_rate": [], "over_refusal_rate": []}
    for tau in taus:
        flags = [refused["refuse" if p > tau else "respond"][i] for i, p in enumerate(p_refuse)]
        out["refusal_rate"].append(sum(flags[:nh]) / nh)
        out["over_refusal_rate"].append(sum(flags[nh:]) / len(benign))
    out["n_harmful"], out["n_benign"] = nh, len(benign)
    return out


def plot(curve: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(curve["over_refusal_rate"], curve["refusal_rate"], marker="o")
    for t, x, y in zip(curve["tau"], curve["over_refusal_rate"], curve["refusal_rate"]):
        a.annotate(f"{t:g}", (x, y), fontsize=6, textcoords="offset points", xytext=(3, 3))
    a.set_xlabel("over-refusal rate (benign look-alikes)")
    a.set_ylabel("refusal rate (harmful)")
    a.set_title("refusal tokens: each point is a threshold tau")
    b.plot(curve["tau"], curve["refusal_rate"], marker="o", label="refusal rate (harmful)")
    b.plot(curve["tau"], curve["over_refusal_rate"], marker="s", label="over-refusal rate (benign)")
    b.set_xlabel("tau (refuse when p_refuse > tau)")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_taus(text: str | None) -> tuple[float, ...]:
    if not text:
        return DEFAULT_TAUS
    try:
        taus = tuple(sorted(float(t) for t in text.split(",") if t.strip()))
    except ValueError:
        raise UsageError(f"--taus must be comma-separated numbers, got {text!r}") from None
    if not taus or not all(0 <= t <= 1 for t in taus):
        raise UsageError("--taus must be numbers in [0, 1]")
    return taus


def run_calibrate(
    model: str,
    data: Path,
    out: Path,
    *,
    split: str = "policy_test",
    taus: str | None = None,
    temperature: float = 1.0,
    limit: int | None = None,
) -> dict:
    """Sweep the refusal-token threshold tau of a model trained with `refusal_tokens`: what `obliviate calibrate`
    runs. `taus`: comma-separated thresholds in [0, 1] (default `refusal.calibrate.DEFAULT_TAUS`); rows: the
    world's `split` (harmful and benign), at most `limit` of them.

    Writes OUT/calibration.json ({"tau", "refusal_rate", "over_refusal_rate", "model", "split"}) and
    OUT/calibration.png. Returns the calibration.json document."""
    from obliviate.models.control_tokens import control_ids
    from obliviate.models.load import check_model_dir, load_model
    from obliviate.refusal.align import policy_rows, subsample

    check_output(out, "calibrate", inputs=(model, data))
    tau_list = parse_taus(taus)
    if temperature <= 0:
        raise UsageError(f"--temperature must be > 0, got {temperature}")
    if limit is not None and limit < 1:
        raise UsageError("--limit must be >= 1")
    rows = policy_rows(data, split)
    check_model_dir(model)
    if limit:
        rows = subsample(rows, limit)
    net, tok = load_model(model, require_chat_template=True)
    if control_ids(tok)[0] is None:
        raise UsageError(f"{model} has no refusal tokens; train one with `obliviate align refusal_tokens`")
    with output_dir(out, "calibrate", inputs=(model, data)) as o:
        curve = sweep(net, tok, rows, tau_list, temperature) | {"model": model, "split": split}
        write_json(o / "calibration.json", curve)
        plot(curve, o / "calibration.png")
    return curve
