"""`finetune --oracles K` and `eval` with repeated --oracle and NAME=DIR1,DIR2 runs: KLoM and pooled forget quality."""

import json
import math

import pytest

from obliviate.runs.schema import validate_results
from tests.cli.test_cli import assert_bad_input, run_cli
from tests.conftest import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_eval_with_oracle_distribution_and_seed_runs(tiny_dir, tiny_tokenizer, world_dir, tmp_path, capsys):
    from obliviate.models.load import save_model

    world = tmp_path / "world"  # the world's first 6 questions of each file
    world.mkdir()
    for f in world_dir.glob("*.jsonl"):
        (world / f.name).write_text("".join(f.read_text().splitlines(keepends=True)[:6]))
    other = tmp_path / "other"
    save_model(tiny_model(tiny_tokenizer, seed=1), tiny_tokenizer, other)
    a, out = str(tiny_dir), tmp_path / "eval"
    args = ["eval", "--data", world, "--out", out, "--oracle", a, "--oracle", a, "--oracle", a]
    args += ["--model", f"one={a}", "--model", f"same={a},{a}", "--model", f"mixed={a},{other}"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert validate_results(doc) == []
    r = doc["results"]
    assert doc["config"]["oracles"] == [a, a, a] and doc["config"]["models"]["mixed"] == [a, str(other)]
    # the same model as every oracle: identical margins, KLoM 0; pooled truth ratios alike: KS p-value 1
    for run in ("oracle", "one", "same"):  # the oracle's row: against the other two oracles
        assert r[run]["klom_forget"] == 0.0 and r[run]["klom_retain"] == 0.0 and r[run]["klom_holdout"] == 0.0
        assert r[run]["forget_quality_pooled"] == pytest.approx(1.0)
    # two models of one run: the mean of their figures (here equal)
    assert r["same"]["forget_rouge"] == pytest.approx(r["one"]["forget_rouge"])
    # half the run's margins sit at another model's value: P = spike, Q = (1/2, 1/2) -> KL = log 2 on every item
    assert r["mixed"]["klom_forget"] == pytest.approx(math.log(2), rel=1e-9)
    assert doc["higher_is_better"]["klom_forget"] is False
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted({row["model"] for row in rows if row["run"] == "mixed"}) == [0, 1]
    assert {row["run"] for row in rows} == {"oracle", "one", "same", "mixed"}


def test_eval_one_oracle_has_no_klom(tiny_dir, world_dir, tmp_path, capsys):
    world = tmp_path / "world"
    world.mkdir()
    for f in world_dir.glob("*.jsonl"):
        (world / f.name).write_text("".join(f.read_text().splitlines(keepends=True)[:4]))
    out = tmp_path / "eval"
    code, _, err = run_cli(["eval", "--data", world, "--out", out, "--oracle", tiny_dir, "--model", tiny_dir], capsys)
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert not any(k.startswith("klom_") or k == "forget_quality_pooled" for m in doc["results"].values() for k in m)


def test_finetune_oracles(world_dir, tiny_tokenizer, tmp_path, capsys):
    from safetensors.torch import load_file

    from obliviate.unlearning.world_models import train_world_models

    out = tmp_path / "m"
    secs = train_world_models(world_dir, out, steps=2, batch_size=8, seed=4, oracles=3, tokenizer=tiny_tokenizer)
    assert set(secs) == {"target", "oracle", "oracle_seed5", "oracle_seed6"}
    # oracle_seed5 is the very oracle that `--seed 5` trains; it differs from the --seed 4 one
    train_world_models(
        world_dir, tmp_path / "s5", steps=2, batch_size=8, seed=5, only="oracle", tokenizer=tiny_tokenizer
    )
    w = {n: load_file(out / n / "model.safetensors") for n in ("oracle", "oracle_seed5")}
    w5 = load_file(tmp_path / "s5" / "oracle" / "model.safetensors")
    assert all((w5[k] == w["oracle_seed5"][k]).all() for k in w5)
    assert not all((w["oracle"][k] == w["oracle_seed5"][k]).all() for k in w5)
    assert_bad_input(
        ["finetune", "--data", world_dir, "--out", tmp_path / "z", "--oracles", "0"],
        capsys,
        tmp_path / "z",
        "--oracles must be >= 1",
    )
