"""`audit openai:URL` against `obliviate serve` on loopback: the black-box attacks give the local audit's figures on
the same model; the others are skipped, each with its reason."""

import json

import pytest

from obliviate.audit.attacks import ATTACKS
from tests.cli.test_cli import assert_bad_input, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

# prefill and random_search with --tokenizer, random_search where the endpoint returns logprobs, completion where it
# has /v1/completions, pair/tap with an attacker model (tests/audit/test_audit_remote_attacks.py runs the others)
BLACK_BOX = {"tense", "templates", "prefill", "pair", "tap", "best_of_n", "decoding", "many_shot", "in_context"}
BLACK_BOX |= {"random_search", "completion"}


def audit(capsys, out, model, world_dir, attacks, *extra):
    args = ["audit", model, "--suite", "refusal", "--data", world_dir, "--attacks", attacks, "--limit", "3"]
    args += ["--option", "templates.templates=2", "--option", "prefill.depths=3,6", "--max-new-tokens", "8"]
    code, _, err = run_cli([*args, "--out", out, *extra], capsys)
    assert code == 0, err
    return json.loads((out / "audit.json").read_text())


def test_black_box_attacks_on_an_endpoint_equal_the_local_audit(target_port, target_dir, world_dir, tmp_path, capsys):
    url = f"openai:http://127.0.0.1:{target_port}/v1"
    attacks = "tense,templates,prefill,gcg"
    local = audit(capsys, tmp_path / "local", target_dir, world_dir, attacks)
    remote = audit(capsys, tmp_path / "remote", url, world_dir, attacks, "--tokenizer", target_dir)
    for name in ("tense", "templates", "prefill"):
        want, got = local["attacks"][name]["model"], remote["attacks"][name]["model"]
        assert {k: v for k, v in got.items() if "seconds" not in k} == {
            k: v for k, v in want.items() if "seconds" not in k
        }, name
    assert "refusal_rate@prefill6" in remote["attacks"]["prefill"]["model"]

    def replies(out):  # the templates' replies, reply for reply (the figures of a tiny model are mostly 0 or 1)
        lines = (out / "artifacts" / "templates" / "model" / "findings.jsonl").read_text().splitlines()
        return [(r["reply"], r["direct_reply"]) for r in map(json.loads, lines)]

    assert replies(tmp_path / "remote") == replies(tmp_path / "local") != []
    assert remote["skipped"]["gcg"].startswith("the audited model is an endpoint; white-box")
    assert remote["config"]["served_models"] == {"model": "tiny"}

    bare = audit(capsys, tmp_path / "bare", url, world_dir, "tense,prefill,pair")
    assert set(bare["attacks"]) == {"tense"}
    assert "--tokenizer" in bare["skipped"]["prefill"] and "--attacker-model" in bare["skipped"]["pair"]


def test_every_attack_says_whether_it_runs_on_an_endpoint():
    runs = {n for n, cls in ATTACKS.items() if cls.from_options({}).on_endpoint(True) is None}
    assert runs == BLACK_BOX - {"pair", "tap"}  # pair and tap need an attacker model besides
    bare = {n for n, cls in ATTACKS.items() if cls.from_options({}).on_endpoint(False) is None}
    assert bare == runs - {"prefill", "random_search"}  # they work in the served model's tokens
    needs = {n: cls.endpoint_needs for n, cls in ATTACKS.items() if cls.endpoint_needs}
    assert needs == {"random_search": ("logprobs",), "completion": ("completions",)}
    assert ATTACKS.get("pair").from_options({"attacker_model": ""}).on_endpoint(True) is not None


def test_bad_endpoint_audits_are_one_line(target_port, world_dir, tmp_path, capsys):
    url = f"openai:http://127.0.0.1:{target_port}/v1"
    base = ["audit", url, "--suite", "refusal", "--data", world_dir, "--out", tmp_path / "o"]
    assert_bad_input([*base, "--attacks", "gcg"], capsys, tmp_path / "o", "gcg: the audited model is an endpoint")
    assert_bad_input([*base, "--served-model", "nope"], capsys, tmp_path / "o", "it serves: tiny")
    assert_bad_input([*base, "--no-chat-template"], capsys, tmp_path / "o", "apply to local models")
