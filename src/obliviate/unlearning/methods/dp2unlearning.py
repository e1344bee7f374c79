"""DP2Unlearning's unlearning stage: fine-tune an (epsilon, delta)-DP-trained model on the retain data only.

Al Mahmud, Jebreel, Domingo-Ferrer and Sanchez 2025, "DP2Unlearning: An Efficient and Guaranteed Unlearning
Framework for LLMs" (arXiv 2504.13774). Stage 1 trains the model on all data under epsilon-DP (`obliviate finetune
--dp-epsilon E`, `obliviate.unlearning.dp`); stage 2, this method, fine-tunes that model with the ordinary SFT loss
(token-mean NLL, as `FineTune`) on the retained data and never reads the forget data. The forget data's influence
on the result is then what (epsilon, delta)-DP allows of the stage-1 model, post-processed. Reference code:
github.com/tamimalmahmud/DP2Unlearning `FT_BaseModel.py` (the DP base model fine-tuned on retain90/95/99 for 5
epochs, against 10 for retraining from scratch: the paper's "about half the cost").

The guarantee holds only from a DP-trained start: a model directory without `dp.json` (written by `obliviate finetune
--dp-epsilon`) gets a one-line warning on stderr, and the run goes on as plain retain fine-tuning (a DP model trained
elsewhere is a valid start; obliviate cannot tell). Defaults tuned on the built-in world (docs/evidence.md, the
DP2Unlearning table): the oracle learns the world in 300 steps of 100 items; 500 steps at `unlearn`'s default retain
batch of 32 read about half as many items (the paper's "about half the cost") and took 0.54 x the oracle's seconds.
300 steps left the epsilon-8 model at 0.71 x the target's utility; from the untrained start instead of the DP
model, the same 500 steps reach 0.77 x, against 1.00 x from the DP model.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

from obliviate.engine.method import Method, nll_loss
from obliviate.models.encode import sequence_logp
from obliviate.unlearning.dp import read_dp_record
from obliviate.unlearning.methods import METHODS


def dp_start(model) -> dict | None:
    """The DP record (`dp.json`) of the directory `model` was loaded from, or None."""
    source = getattr(getattr(model, "config", None), "_name_or_path", "") or getattr(model, "name_or_path", "")
    return read_dp_record(source) if source else None


@METHODS.register("dp2unlearning")
@dataclass
class DP2Unlearning(Method):
    lr: float = 3e-3
    steps: int = 500

    needs: ClassVar[tuple[str, ...]] = ("retain",)
    splits: ClassVar[bool] = True

    def begin(self, model) -> None:
        record = dp_start(model)
        if record is None:
            print(
                "warning: dp2unlearning: the model has no dp.json (train it with `obliviate finetune --dp-epsilon E`);"
                " without a DP-trained start this is plain retain fine-tuning, with no forgetting guarantee",
                file=sys.stderr,
            )
        else:
            print(
                f"dp2unlearning: DP start with epsilon {record.get('epsilon', float('nan')):.3f} at delta "
                f"{record.get('delta')}",
                file=sys.stderr,
            )

    def part_loss(self, model, name, part, ref_model=None):
        loss = nll_loss(*sequence_logp(model, part))
        return loss, {"nll": loss.item()}
