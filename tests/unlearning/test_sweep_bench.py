import json

import pytest

from obliviate.core.errors import UsageError
from obliviate.runs.schema import validate_results
from obliviate.unlearning.bench import aggregate
from obliviate.unlearning.sweep import parse_grid, pick_best
from tests.cli.test_cli import run_cli


def test_parse_grid():
    assert parse_grid("lr=1e-4,3e-4 beta=0.1") == {"lr": ["1e-4", "3e-4"], "beta": ["0.1"]}
    for bad in ("lr", "lr=", "", "lr=1 lr=2"):
        with pytest.raises(UsageError):
            parse_grid(bad)


def test_pick_best_respects_the_utility_constraint():
    pts = [
        {"options": {"lr": "a"}, "metrics": {"forget_quality": 0.9, "model_utility": 0.5}},
        {"options": {"lr": "b"}, "metrics": {"forget_quality": 0.2, "model_utility": 0.95}},
        {"options": {"lr": "c"}, "metrics": {"forget_quality": 0.1, "model_utility": 1.0}},
    ]
    assert pick_best(pts, "forget_quality", 1.0, 0.9)["options"] == {"lr": "b"}
    assert pick_best(pts, "forget_quality", 1.0, 0.4)["options"] == {"lr": "a"}
    assert pick_best(pts, "forget_quality", 2.0, 0.9) is None


def test_aggregate_mean_and_std():
    runs = [
        {
            "split": "f",
            "method": "m",
            "forget_quality": x,
            "model_utility_ratio": 1.0,
            "forget_rouge": 0.5,
            "privleak": 0.0,
            "seconds": 1.0,
        }
        for x in (0.1, 0.3)
    ]
    agg = aggregate(runs)["f"]["m"]
    assert agg["forget_quality"][0] == pytest.approx(0.2)
    assert agg["forget_quality"][1] == pytest.approx(0.1414214, abs=1e-6)  # sample std of 0.1, 0.3


@pytest.mark.slow  # about 30 s: `make test-slow`
def test_bench_small(tmp_path, capsys):
    code, out, err = run_cli(
        [
            "bench",
            "--out",
            tmp_path / "b",
            "--seeds",
            "0,1",
            "--splits",
            "forget10",
            "--methods",
            "grad_ascent",
            "--finetune-steps",
            3,
            "--people",
            100,
        ],
        capsys,
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "b" / "leaderboard.json").read_text())
    assert validate_results(doc) == []
    assert set(doc["leaderboard"]["forget10"]) == {"target", "grad_ascent"}
    assert len(doc["results"]) == 4  # 2 seeds x (target + 1 method)
    assert (tmp_path / "b" / "pareto.png").stat().st_size > 1000
    assert "grad_ascent" in out


def test_sweep_small(target_dir, world_dir, tmp_path, capsys):
    code, out, err = run_cli(
        [
            "sweep",
            "--method",
            "npo",
            "--grid",
            "lr=1e-4,1e-3 steps=2",
            "--model",
            target_dir,
            "--oracle",
            target_dir,
            "--data",
            world_dir,
            "--out",
            tmp_path / "s",
        ],
        capsys,
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert len(doc["points"]) == 2 and doc["criterion"]["min_utility_ratio"] == 0.9
    code, _, err = run_cli(
        [
            "sweep",
            "--method",
            "npo",
            "--grid",
            "bogus=1",
            "--model",
            target_dir,
            "--oracle",
            target_dir,
            "--data",
            world_dir,
            "--out",
            tmp_path / "s2",
        ],
        capsys,
    )
    assert code == 2 and "no option 'bogus'" in err and not (tmp_path / "s2").exists()


@pytest.mark.slow  # 41 s: `make test-slow` (make test stays under 12 minutes)
def test_bench_resume_redoes_only_what_is_missing(tmp_path, capsys):
    args = [
        "bench",
        "--out",
        tmp_path / "b",
        "--seeds",
        "0",
        "--splits",
        "forget10",
        "--methods",
        "grad_ascent,npo",
        "--finetune-steps",
        3,
        "--people",
        100,
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    first = json.loads((tmp_path / "b" / "leaderboard.json").read_text())["leaderboard"]
    lines = (tmp_path / "b" / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 3
    # simulate a kill while the last run was being written
    (tmp_path / "b" / "runs.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "b" / "leaderboard.json").read_text())["leaderboard"]
    drop = lambda agg: {m: {c: v for c, v in cols.items() if c != "seconds"} for m, cols in agg["forget10"].items()}
    assert drop(again) == drop(first)  # training seconds differ between runs; every metric is identical
    assert len((tmp_path / "b" / "runs.jsonl").read_text().splitlines()) == 3
    code, _, err = run_cli([*args[:-4], "--finetune-steps", 4, "--people", 100, "--resume"], capsys)
    assert code == 2 and "other settings" in err


def test_bench_with_oracles_adds_klom_to_the_leaderboard(tmp_path, capsys):
    args = ["bench", "--out", tmp_path / "b", "--seeds", "0", "--splits", "forget10", "--methods", "grad_ascent"]
    code, out, err = run_cli([*args, "--finetune-steps", 3, "--people", 100, "--oracles", 2], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "b" / "leaderboard.json").read_text())
    assert validate_results(doc) == [] and doc["config"]["oracles"] == 2
    assert (tmp_path / "b" / "seed0" / "models" / "forget10" / "oracle_seed1").is_dir()
    board = doc["leaderboard"]["forget10"]
    # one model per run against 2 oracles: KLoM is defined (a run of one model is a spike, see metrics.klom)
    assert all(board[run]["klom_forget"][0] >= 0 for run in ("target", "grad_ascent")), board
    assert "KLoM forget" in out
