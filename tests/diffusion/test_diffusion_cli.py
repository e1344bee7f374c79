"""`eval --suite diffusion` and `audit --suite diffusion` on a written image world, on a pixel-space model and on a
Stable Diffusion-layout model with a VAE (built from config), and their bad-input exits."""

import json

import pytest

from obliviate.diffusion.model import T2I, T2IConfig, build_t2i, build_word_tokenizer
from obliviate.diffusion.world import load_image_world, vocabulary
from tests.cli.test_cli import run_cli


@pytest.fixture(scope="module")
def setup(tmp_path_factory):

    d = tmp_path_factory.mktemp("diffcli")

    class Cap:  # a minimal capsys stand-in for a module-scoped fixture
        def readouterr(self):
            import types

            return types.SimpleNamespace(out="", err="")

    code, _, err = run_cli(
        ["world", "--images", "--out", d / "world", "--per-combination", 2, "--classifiers", "--classifier-steps", 20],
        Cap(),
    )
    assert code == 0, err
    world = load_image_world(d / "world")
    tok = build_word_tokenizer(vocabulary(world))
    pixel = build_t2i(tok, T2IConfig(size=16, channels=(16, 32), text_dim=32, text_layers=1, text_heads=2), seed=0)
    pixel.save(d / "pixel")
    from diffusers import AutoencoderKL, UNet2DConditionModel

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=16,
    ).eval()
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    T2I(unet, pixel.text_encoder, pixel.tokenizer, pixel.scheduler_config, vae).save(d / "sd")
    return d


def test_eval_suite_diffusion(setup, tmp_path, capsys):
    d = setup
    code, _, err = run_cli(
        ["erase", "uce", "--model", d / "pixel", "--concept", "star", "--out", tmp_path / "uce"], capsys
    )
    assert code == 0, err
    code, out, err = run_cli(
        [
            "eval",
            "--suite",
            "diffusion",
            "--data",
            d / "world",
            "--concept",
            "star",
            "--model",
            f"base={d / 'pixel'}",
            "--model",
            f"uce={tmp_path / 'uce'}",
            "--limit",
            2,
            "--ddim-steps",
            3,
            "--guidance",
            3.0,
            "--out",
            tmp_path / "ev",
        ],
        capsys,
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert (doc["config"]["sample"]["steps"], doc["config"]["sample"]["guidance"]) == (3, 3.0)
    assert set(doc["results"]) == {"base", "uce"}
    assert all(0 <= doc["results"][r]["ua"] <= 1 for r in ("base", "uce"))
    assert (tmp_path / "ev" / "grids" / "uce.png").is_file() and "ua" in out


def test_erase_and_audit_a_latent_model_with_a_vae(setup, tmp_path, capsys):
    d = setup
    code, _, err = run_cli(
        [
            "erase",
            "esd_x",
            "--model",
            d / "sd",
            "--concept",
            "star",
            "--option",
            "steps=1",
            "--option",
            "ddim_steps=2",
            "--out",
            tmp_path / "esd",
        ],
        capsys,
    )
    assert code == 0, err
    code, out, err = run_cli(
        [
            "audit",
            str(tmp_path / "esd"),
            "--suite",
            "diffusion",
            "--data",
            d / "world",
            "--concept",
            "star",
            "--target",
            d / "sd",
            "--attacks",
            "unlearndiffatk,concept_arithmetic",
            "--option",
            "unlearndiffatk.steps=1",
            "--option",
            "concept_arithmetic.budget=1",
            "--option",
            "concept_arithmetic.samples=1",
            "--option",
            "concept_arithmetic.steps=2",
            "--limit",
            1,
            "--out",
            tmp_path / "au",
        ],
        capsys,
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "au" / "audit.json").read_text())
    assert set(doc["attacks"]) == {"unlearndiffatk", "concept_arithmetic"}
    # the figures are the per-prompt successes (the attack's successes themselves are checked on a model whose answer
    # is known in test_diffusion_attacks.py)
    fig = doc["attacks"]["unlearndiffatk"]
    assert len(fig["per_prompt"]) == len(doc["prompts"]) == 1 and fig["asr"] == float(fig["per_prompt"][0])
    assert fig["pre_asr"] == doc["pre_asr"] and "star" in doc["prompts"][0].split()  # a target prompt was attacked


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--concept", "stra"], "did you mean 'star'"),
        (["--concept", "star", "--attacks", "unlearndifatk"], "did you mean 'unlearndiffatk'"),
        (["--concept", "star", "--no-target"], "--target"),
        (["--concept", "star", "--guidance", "0"], "--guidance must be > 0"),
        (["--concept", "star", "--ddim-steps", "0"], "--ddim-steps must be >= 1"),
    ],
)
def test_audit_bad_input(setup, tmp_path, capsys, args, needle):
    d = setup
    target = [] if "--no-target" in args else ["--target", str(d / "pixel")]
    args = [a for a in args if a != "--no-target"]
    code, _, err = run_cli(
        [
            "audit",
            str(d / "pixel"),
            "--suite",
            "diffusion",
            "--data",
            d / "world",
            *args,
            *target,
            "--out",
            tmp_path / "au",
        ],
        capsys,
    )
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "au").exists()


def test_sampling_options_belong_to_the_diffusion_suite(setup, tmp_path, capsys):
    code, _, err = run_cli(
        ["eval", "--model", tmp_path / "m", "--data", setup / "world", "--guidance", 3.0, "--out", tmp_path / "ev"],
        capsys,
    )
    assert code == 2 and "apply to --suite diffusion" in err and not (tmp_path / "ev").exists()


def test_eval_a_directory_without_unet(setup, tmp_path, capsys):
    d = setup
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(
        [
            "eval",
            "--suite",
            "diffusion",
            "--data",
            d / "world",
            "--concept",
            "star",
            "--model",
            tmp_path / "empty",
            "--out",
            tmp_path / "ev",
        ],
        capsys,
    )
    assert code == 2 and "unet" in err and not (tmp_path / "ev").exists()


def test_dtype_is_refused_for_text_to_image_models(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OBLIVIATE_DTYPE", "float32")  # restored after the test: main() sets it from --dtype
    code, _, err = run_cli(
        ["erase", "uce", "--model", setup / "pixel", "--concept", "star", "--out", tmp_path / "u", "--dtype", "bf16"],
        capsys,
    )
    assert code == 2 and "applies to language models" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "u").exists()


def test_findings_are_kept_and_replayed_on_another_model(setup, tmp_path, capsys):
    """The audit keeps what each attack found (prompts, contexts, compositions, each with its image); `--replay`
    runs exactly those on another model: the replayed prompts are the saved ones, byte for byte."""
    d = setup
    code, _, err = run_cli(
        ["erase", "uce", "--model", d / "pixel", "--concept", "star", "--out", tmp_path / "uce"], capsys
    )
    assert code == 0, err
    args = ["--suite", "diffusion", "--data", d / "world", "--ddim-steps", 2]
    code, _, err = run_cli(
        [
            "audit",
            str(d / "pixel"),
            *args,
            "--concept",
            "star",
            "--target",
            d / "pixel",
            "--attacks",
            "unlearndiffatk,p4d,embedding_shift,concept_arithmetic",
            "--option",
            "unlearndiffatk.steps=1",
            "--option",
            "p4d.steps=1",
            "--option",
            "embedding_shift.steps=1",
            "--option",
            "concept_arithmetic.budget=1",
            "--option",
            "concept_arithmetic.samples=2",
            "--option",
            "concept_arithmetic.steps=2",
            "--limit",
            2,
            "--out",
            tmp_path / "au",
        ],
        capsys,
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "au" / "audit.json").read_text())
    saved = {}
    for attack, fig in doc["attacks"].items():
        rows = [json.loads(x) for x in (tmp_path / "au" / fig["findings"] / "findings.jsonl").read_text().splitlines()]
        assert all((tmp_path / "au" / fig["findings"] / r["image"]).is_file() for r in rows)
        saved[attack] = rows
    attacked = [r for r in saved["unlearndiffatk"] if r["attacked"]]
    assert all(r["found_prompt"].endswith(r["prompt"]) for r in attacked)  # prefix + the target prompt
    assert all(
        r["context"] and r["context"].endswith(".safetensors") for r in saved["embedding_shift"] if r["attacked"]
    )
    assert saved["concept_arithmetic"][0]["terms"]
    code, out, err = run_cli(
        ["audit", str(tmp_path / "uce"), *args, "--replay", tmp_path / "au", "--out", tmp_path / "re"], capsys
    )
    assert code == 0, err
    again = json.loads((tmp_path / "re" / "audit.json").read_text())
    assert again["concept"] == "star" and again["replay"] == str(tmp_path / "au")
    for attack, fig in again["attacks"].items():
        rows = [json.loads(x) for x in (tmp_path / "re" / fig["findings"] / "findings.jsonl").read_text().splitlines()]
        src = [r for r in saved[attack] if r["found_prompt"] or r["context"] or r["terms"]]
        assert fig["replayed"] == len(rows) == len(src) and 0 <= fig["transfer_asr"] <= 1
        assert [r["found_prompt"] for r in rows] == [r["found_prompt"] for r in src]  # byte for byte
        assert [r["terms"] for r in rows] == [r["terms"] for r in src]
    assert "transfer ASR" in out and (tmp_path / "re" / "report.html").is_file()


def test_replay_of_a_directory_without_findings(setup, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(
        [
            "audit",
            str(setup / "pixel"),
            "--suite",
            "diffusion",
            "--data",
            setup / "world",
            "--replay",
            tmp_path / "empty",
            "--out",
            tmp_path / "re",
        ],
        capsys,
    )
    assert code == 2 and "no findings to replay" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "re").exists()
