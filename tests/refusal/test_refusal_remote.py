"""`refusal-eval --model openai:URL` against `obliviate serve` on loopback gives the local run's greedy figures on the
same model, reply for reply; prefill depths need the model's tokenizer (`--tokenizer`), and are skipped, and said
to be, without it. Bad endpoints fail with one line and leave no output."""

import json

import pytest

from tests.cli.test_cli import assert_bad_input, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def refusal_eval(capsys, out, model, world_dir, *extra):
    args = ["refusal-eval", "--model", model, "--data", world_dir, "--out", out, "--limit", "6"]
    code, stdout, err = run_cli([*args, "--max-new-tokens", "12", *extra], capsys)
    assert code == 0, err
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return json.loads((out / "results.json").read_text()), samples, stdout


def test_remote_refusal_eval_equals_the_local_run(target_port, target_dir, world_dir, tmp_path, capsys):
    url = f"openai:http://127.0.0.1:{target_port}/v1"
    local, local_samples, _ = refusal_eval(capsys, tmp_path / "local", f"m={target_dir}", world_dir)
    remote, remote_samples, said = refusal_eval(
        capsys, tmp_path / "remote", f"m={url}", world_dir, "--served-model", "tiny", "--tokenizer", target_dir
    )
    want, got = local["results"]["m"], remote["results"]["m"]
    assert {"refusal_rate", "over_refusal_rate", "refusal_rate@prefill20", "people_accuracy"} <= set(got)
    assert got == want
    assert [s["output"] for s in remote_samples] == [s["output"] for s in local_samples]  # reply for reply
    assert remote["config"]["served_models"] == {"m": "tiny"} and "prefill" not in remote["config"]

    # without a tokenizer: the same figures less the prefill depths, and one line saying so
    bare, bare_samples, said = refusal_eval(capsys, tmp_path / "bare", url, world_dir)
    run = f"127.0.0.1:{target_port}"  # a bare endpoint is named after its host and target_port
    assert bare["config"]["served_models"] == {run: "tiny"}  # the one model the endpoint lists
    assert "refusal at prefill depths not measured" in bare["config"]["prefill"]
    assert sum("prefill depths not measured" in line for line in said.splitlines()) == 1
    figures = bare["results"][run]
    assert not any("prefill" in k for k in figures) and figures["refusal_position_mean"] is None
    depth0 = {k: v for k, v in want.items() if "prefill" not in k and k != "refusal_position_mean"}
    assert {k: figures[k] for k in depth0} == depth0
    assert [s["output"] for s in bare_samples] == [s["output"] for s in local_samples if s["depth"] == 0]


def test_bad_endpoints_are_one_line(target_port, world_dir, tmp_path, capsys, monkeypatch):
    url = f"openai:http://127.0.0.1:{target_port}/v1"
    base = ["refusal-eval", "--data", world_dir, "--out", tmp_path / "o"]
    assert_bad_input([*base, "--model", url, "--served-model", "gpt-x"], capsys, tmp_path / "o", "it serves: tiny")
    closed = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there
    assert_bad_input([*base, "--model", f"openai:{closed}"], capsys, tmp_path / "o", f"{closed} is unreachable")
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    assert_bad_input(
        [*base, "--model", url, "--api-key-env", "NO_SUCH_KEY_VAR"], capsys, tmp_path / "o", "NO_SUCH_KEY_VAR"
    )
    assert_bad_input([*base, "--model", url, "--concurrency", "0"], capsys, tmp_path / "o", "--concurrency")
    guard = tmp_path / "g"
    guard.mkdir()
    assert_bad_input([*base, "--model", url, "--guard", guard], capsys, tmp_path / "o", "local models")
    assert_bad_input([*base, "--model", url, "--no-chat-template"], capsys, tmp_path / "o", "local models")
