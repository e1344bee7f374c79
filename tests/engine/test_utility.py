"""`--utility lm-eval:TASKS`: lm-evaluation-harness on the model in memory, on a local multiple-choice task that the
tests write (a YAML and a JSONL), offline."""

from __future__ import annotations

import json
import random

import pytest

from obliviate.core.errors import UsageError
from tests.cli.test_cli import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def write_task(d, rows, name="tiny_mc"):
    """An lm-eval multiple-choice task `name` over `rows` ({"question", "choices", "label"}) in directory d."""
    from obliviate.engine.utility import multiple_choice_yaml

    d.mkdir(parents=True, exist_ok=True)
    data = d / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / f"{name}.yaml").write_text(multiple_choice_yaml(name, data))
    return d


def world_rows(world_dir, n=12, seed=0):
    """The first n training questions of the world, their answer among its alternates, in a seeded order."""
    rng, rows = random.Random(seed), []
    for line in (world_dir / "train.jsonl").read_text().splitlines()[:n]:
        it = json.loads(line)
        choices = [it["answer"], *it["alternate_answers"]]
        rng.shuffle(choices)
        rows.append({"question": it["question"], "choices": choices, "label": choices.index(it["answer"])})
    return rows


def direct_accuracy(model, tok, rows) -> float:
    """Accuracy from the model's own log-likelihood of each choice after "Question: q\\nAnswer:", encoded as
    lm-eval encodes a causal pair: context + " " + choice as a whole, the continuation what follows the context's
    tokens; the first highest choice wins."""
    import torch

    hits = 0
    for r in rows:
        context = f"Question: {r['question']}\nAnswer:"
        scores = []
        for choice in r["choices"]:
            ctx, whole = tok.encode(context), tok.encode(context + " " + choice)
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].float(), -1)
            scores.append(sum(float(logp[t - 1, whole[t]]) for t in range(len(ctx), len(whole))))
        hits += max(range(len(scores)), key=lambda j: (scores[j], -j)) == r["label"]
    return hits / len(rows)


def test_accuracy_is_the_one_from_the_models_choice_loglikelihoods(target_dir, world_dir, tmp_path):
    from obliviate.engine.utility import parse_utility, run_utility
    from obliviate.models.load import load_model

    rows = world_rows(world_dir)
    spec = parse_utility("lm-eval:tiny_mc", write_task(tmp_path / "tasks", rows), limit=0)
    net, tok = load_model(str(target_dir))
    net.train()
    found = run_utility(net, tok, spec, "target")
    expected = direct_accuracy(net.eval(), tok, rows)
    assert found["values"]["utility/tiny_mc/acc"] == pytest.approx(expected)
    assert found["n"] == {"tiny_mc": len(rows)}
    iv = found["intervals"]["utility/tiny_mc/acc"]
    assert iv["n"] == len(rows) and iv["value"] == pytest.approx(expected) and iv["lo"] <= expected <= iv["hi"]
    p = expected  # lm-eval's standard error of a mean of 0/1 outcomes: the sample standard deviation / sqrt(n)
    se = (p * (1 - p) * len(rows) / (len(rows) - 1)) ** 0.5 / len(rows) ** 0.5
    assert found["stderr"]["utility/tiny_mc/acc"] == pytest.approx(se)
    assert "utility/tiny_mc/acc_norm" in found["values"]
    # a limit scores the first examples only
    few = run_utility(net, tok, parse_utility("lm-eval:tiny_mc", tmp_path / "tasks", limit=3), "target")
    assert few["n"] == {"tiny_mc": 3}
    assert few["values"]["utility/tiny_mc/acc"] == pytest.approx(direct_accuracy(net, tok, rows[:3]))


def test_tofu_world_facts_become_a_four_way_task(tmp_path):
    import yaml

    from obliviate.engine.utility import tofu_world_facts_task

    src = tmp_path / "world_facts_perturbed.json"
    items = [
        {"question": "Where is the Eiffel Tower?", "answer": "Paris", "perturbed_answer": ["Berlin", "Rome", "Oslo"]},
        {"question": "Largest ocean?", "answer": "Pacific", "perturbed_answer": ["Atlantic", "Indian", "Arctic"]},
    ]
    src.write_text("".join(json.dumps(i) + "\n" for i in items))
    d = tofu_world_facts_task(src, tmp_path / "task", seed=3)
    rows = [json.loads(x) for x in (d / "tofu_world_facts.jsonl").read_text().splitlines()]
    assert [r["choices"][r["label"]] for r in rows] == ["Paris", "Pacific"]
    assert [sorted(r["choices"]) for r in rows] == [sorted([i["answer"], *i["perturbed_answer"]]) for i in items]
    cfg = yaml.safe_load((d / "tofu_world_facts.yaml").read_text())
    assert cfg["output_type"] == "multiple_choice" and cfg["dataset_path"] == "json"
    assert cfg["dataset_kwargs"]["data_files"]["test"] == str((d / "tofu_world_facts.jsonl").resolve())
    src.write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(UsageError, match=r"world_facts_perturbed.json:1: expected"):
        tofu_world_facts_task(src, tmp_path / "task2")


def test_flags_are_checked():
    from obliviate.engine.utility import parse_utility

    assert parse_utility(None) is None
    for spec, limit, match in [
        ("mmlu", 10, "expects lm-eval:TASK"),
        ("lm-eval:", 10, "names no task"),
        ("lm-eval:mmlu", -1, "--utility-limit"),
    ]:
        with pytest.raises(UsageError, match=match):
            parse_utility(spec, None, limit)
    with pytest.raises(UsageError, match="--utility-tasks applies"):
        parse_utility(None, ".")
    assert parse_utility("lm-eval:a, b", None, 0).tasks == ("a", "b") and parse_utility("lm-eval:a").limit == 100


def test_a_missing_data_file_is_named(tmp_path):
    from obliviate.engine.utility import check_utility, parse_utility

    d = write_task(tmp_path / "tasks", [{"question": "q", "choices": ["a", "b"], "label": 0}])
    (d / "tiny_mc.jsonl").unlink()
    with pytest.raises(UsageError, match=r"task 'tiny_mc' cannot load json .*tiny_mc\.jsonl.* offline"):
        check_utility(parse_utility("lm-eval:tiny_mc", d))


def test_an_unknown_task_gets_the_closest_name(tmp_path):
    from obliviate.engine.utility import check_utility, parse_utility

    d = write_task(tmp_path / "tasks", [{"question": "q", "choices": ["a", "b"], "label": 0}], name="tiny_world_mc")
    with pytest.raises(UsageError, match=r"no lm-eval task 'tiny_world_mcq'.*did you mean 'tiny_world_mc'\?"):
        check_utility(parse_utility("lm-eval:tiny_world_mcq", d))
    with pytest.raises(UsageError, match=r"no lm-eval task 'hellaswg'.*did you mean 'hellaswag'\?"):
        check_utility(parse_utility("lm-eval:hellaswg"))


def test_a_model_lm_eval_cannot_load_says_why(tmp_path, tiny_tokenizer):
    import torch

    from obliviate.engine.utility import parse_utility, run_utility

    spec = parse_utility(
        "lm-eval:tiny_mc", write_task(tmp_path, [{"question": "q", "choices": ["a", "b"], "label": 0}])
    )
    with pytest.raises(UsageError, match=r"cannot load probe: a Linear is not a transformers model"):
        run_utility(torch.nn.Linear(2, 2), tiny_tokenizer, spec, "probe")


def test_eval_and_unlearn_report_utility(tiny_dir, world_dir, tmp_path, capsys):
    from obliviate.runs.schema import validate_results

    tasks = write_task(tmp_path / "tasks", world_rows(world_dir, n=4))
    util = ["--utility", "lm-eval:tiny_mc", "--utility-tasks", tasks]
    code, out, err = run_cli(
        ["eval", "--model", f"m={tiny_dir}", "--data", world_dir, "--out", tmp_path / "e", *util], capsys
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "e" / "results.json").read_text())
    assert [p for p in validate_results(doc) if "utility" in p] == []
    assert 0 <= doc["results"]["m"]["utility/tiny_mc/acc"] <= 1 and doc["n_samples"]["utility/tiny_mc"] == 4
    assert doc["config"]["utility"]["tasks"] == ["tiny_mc"] and "m" in doc["config"]["utility"]["stderr"]
    assert doc["intervals"]["m"]["utility/tiny_mc/acc"]["n"] == 4
    args = ["unlearn", "--model", tiny_dir, "--suite", "world", "--data", world_dir, "--method", "grad_diff"]
    code, out, err = run_cli([*args, "--steps", "1", "--out", tmp_path / "u", *util], capsys)
    assert code == 0, err
    log = json.loads((tmp_path / "u" / "train_log.json").read_text())
    acc = log["utility"]["values"]["utility/tiny_mc/acc"]
    assert log["utility"]["n"] == {"tiny_mc": 4} and "utility/tiny_mc/acc" in out and f"{acc:.3f}" in out


def test_bad_utility_input_is_one_line(tiny_dir, world_dir, tmp_path, capsys):
    from tests.cli.test_bad_inputs import assert_one_line

    tasks = write_task(tmp_path / "tasks", [{"question": "q", "choices": ["a", "b"], "label": 0}])
    util = ["--utility", "lm-eval:tiny_mc", "--utility-tasks", tasks]
    args = ["refusal-eval", "--model", "openai:http://127.0.0.1:9/v1", "--data", world_dir, "--out", tmp_path / "r"]
    assert_one_line([*args, *util], capsys, "lm-eval cannot load", "endpoint")
    assert not (tmp_path / "r").exists()
    args = ["eval", "--model", tiny_dir, "--data", world_dir, "--out", tmp_path / "e"]
    assert_one_line(
        [*args, "--utility", "lm-eval:tiny_mcc", "--utility-tasks", tasks], capsys, "did you mean 'tiny_mc'"
    )
    assert not (tmp_path / "e").exists()


def test_check_utility_reads_a_string_as_the_flag_does(tmp_path):
    from obliviate.engine.utility import UtilitySpec, check_utility

    assert check_utility(None) is None
    with pytest.raises(UsageError, match="expects lm-eval:TASK"):
        check_utility("mmlu")
    spec = UtilitySpec(("tiny_mc",), write_task(tmp_path / "t", [{"question": "q", "choices": ["a", "b"], "label": 0}]))
    assert check_utility(spec) is spec
