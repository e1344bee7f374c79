"""score_model scores every split as one union: the same rows as scoring each split on its own."""

import pytest

from obliviate.evaluate import score_model, score_split
from obliviate.models.load import load_model
from obliviate.pipeline import eval_data


def test_score_model_pooled_equals_per_split(target_dir, world_dir):
    model, tok = load_model(str(target_dir))
    data = {s: items[:5] for s, items in eval_data(world_dir).items()}
    pooled = score_model(model, tok, data, max_new_tokens=6)
    assert list(pooled) == list(data)
    for split, items in data.items():
        alone = score_split(model, tok, items, max_new_tokens=6)
        assert [r["id"] for r in pooled[split]] == [it.id for it in items]
        for a, b in zip(pooled[split], alone):
            assert a["generated"] == b["generated"]
            assert a["gt_loss"] == pytest.approx(b["gt_loss"], abs=1e-5)
            assert a["perturbed_loss"] == pytest.approx(b["perturbed_loss"], abs=1e-5)
            assert a["pred_ids"] == b["pred_ids"]
