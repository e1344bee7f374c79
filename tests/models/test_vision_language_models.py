"""Vision-language chat models used on text alone (Qwen2.5-VL, Mistral 3: no causal-LM class in transformers, so
`load_model` takes their image-text-to-text class): tiny random ones load, decode as transformers' generate does,
score shared prompts as full sequences do, and unlearn through the CLI into a directory that loads back whole."""

from __future__ import annotations

import pytest
import torch

from obliviate.engine.evaluate import _forward_stats, _shared_prompt_stats
from obliviate.engine.generation import decode, left_pad
from obliviate.models.encode import IGNORE, prompt_ids
from obliviate.models.load import load_model
from tests.cli.test_cli import run_cli


def _configs(v: int) -> dict:
    text = dict(
        vocab_size=v,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    return {
        # Qwen2.5-VL's multimodal rope splits head_dim / 2 = 8 frequencies into (temporal, height, width)
        "qwen2_5_vl": dict(
            text_config=dict(
                text, rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}
            ),
            vision_config=dict(
                depth=1,
                hidden_size=16,
                intermediate_size=32,
                num_heads=2,
                out_hidden_size=32,
                fullatt_block_indexes=[0],
                patch_size=8,
            ),
            image_token_id=v - 1,
            video_token_id=v - 2,
            vision_start_token_id=v - 3,
            vision_end_token_id=v - 4,
        ),
        "mistral3": dict(
            text_config=dict(text, model_type="mistral"),
            vision_config=dict(
                model_type="pixtral",
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                head_dim=8,
                image_size=32,
                patch_size=8,
            ),
            image_token_index=v - 1,
        ),
    }


@pytest.fixture(scope="module", params=["qwen2_5_vl", "mistral3"])
def vlm_dir(request, tmp_path_factory, tiny_tokenizer):
    from transformers import AutoConfig, AutoModelForImageTextToText

    tok = tiny_tokenizer
    cfg = AutoConfig.for_model(request.param, **_configs(len(tok))[request.param])
    for c in (cfg, cfg.get_text_config()):
        c.pad_token_id, c.eos_token_id, c.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp(request.param)
    AutoModelForImageTextToText.from_config(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_loads_decodes_and_scores_like_transformers(vlm_dir):
    model, tok = load_model(str(vlm_dir))
    assert "ConditionalGeneration" in type(model).__name__  # not a causal-LM class: the fallback was taken
    prompts = sorted([prompt_ids(tok, q) for q in ("hi", "Where was Vyrek Pellam born and when?")], key=len)
    ours = decode(model, tok, prompts, max_new_tokens=12)
    ids, mask = left_pad(prompts, tok.pad_token_id)
    with torch.no_grad():
        hf = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    assert [r.token_ids for r in ours] == [
        row[: len(r.token_ids)] for r, row in zip(ours, hf[:, ids.shape[1] :].tolist())
    ]
    groups = [(prompts[1], [[11, 12, 2], [20, 2], [30, 31, 32, 2]]), (prompts[0], [[40, 41, 2], [42, 2]])]
    with torch.no_grad():
        shared = _shared_prompt_stats(model, groups, tok.pad_token_id)
        for (p, answers), got in zip(groups, shared):
            full = _forward_stats(model, [(p + a, [IGNORE] * len(p) + a) for a in answers], tok.pad_token_id, 8)
            assert [s["loss"] for s in got] == pytest.approx([f["loss"] for f in full], abs=1e-5)


def test_unlearn_with_lora_saves_a_loadable_model(vlm_dir, world_dir, tmp_path, capsys):
    out = tmp_path / "npo"
    code, _, err = run_cli(
        [
            "unlearn",
            "--model",
            vlm_dir,
            "--forget",
            world_dir / "forget10.jsonl",
            "--retain",
            world_dir / "retain90.jsonl",
            "--method",
            "npo",
            "--steps",
            "1",
            "--lora-r",
            "2",
            "--forget-batch-size",
            "2",
            "--retain-batch-size",
            "2",
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0, err
    model, _ = load_model(str(out))
    assert type(model).__name__ == type(load_model(str(vlm_dir))[0]).__name__  # the vision tower saved too
