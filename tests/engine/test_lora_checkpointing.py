"""LoRA under gradient checkpointing: every adapter's B matrix must leave zero.

peft starts B at zero, so an adapter whose gradient never arrives stays an exact no-op and the merged model is the
base model. That happens with reentrant activation checkpointing behind frozen embeddings: the checkpointed
blocks' inputs do not require grad, so torch.utils.checkpoint's reentrant function returns outputs without a
graph and the adapters inside get no gradient (the LoRA-untrained-under-checkpointing reports of OpenUnlearning
and peft). `train` must reach them whichever checkpointing variant the model uses.
"""

import pytest
import torch

from obliviate.data.schema import load_qa
from obliviate.engine import train as train_mod
from obliviate.engine.train import FineTune, TrainConfig, train
from obliviate.models.load import load_model
from obliviate.unlearning.run import qa_pairs

pytestmark = pytest.mark.usefixtures("one_thread")


def reentrant_checkpointing(model, on: bool) -> None:
    """`train.checkpointing` with the reentrant variant (transformers' default before 4.35, and what a model that
    ignores the kwargs falls back to)."""
    renamed = hasattr(model, "activation_checkpointing_enable")  # transformers 5.24 renamed the methods
    if on and renamed:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    elif renamed:
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_lora_b_matrices_train_under_gradient_checkpointing(reentrant, tiny_dir, world_dir, monkeypatch):
    if reentrant:
        monkeypatch.setattr(train_mod, "checkpointing", reentrant_checkpointing)
    torch.manual_seed(0)
    model, tok = load_model(str(tiny_dir))
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(retain_batch_size=8, checkpoint_every=0, lora_r=4, progress=False, gradient_checkpointing=True)
    seen = {}

    def record(step, m):
        seen.update({n: p.detach().clone() for n, p in m.named_parameters() if "lora_B" in n})

    items = qa_pairs(load_qa(world_dir / "retain90.jsonl")[:16])
    model, _ = train(model, tok, FineTune(lr=1e-2, steps=2), {"retain": items}, cfg, on_step=record)
    assert seen, "no LoRA adapters were added"
    zero = [n for n, b in seen.items() if not b.abs().sum() > 0]
    assert not zero, f"{len(zero)} of {len(seen)} LoRA B matrices never trained, e.g. {zero[0]}"
    # and the merged model is not the base model: every adapted Linear moved
    moved = [n for n, p in model.named_parameters() if n in base and not torch.equal(p, base[n])]
    assert len(moved) == len(seen)
