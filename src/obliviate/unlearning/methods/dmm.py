"""Datamodel Matching (DMM): Oracle Matching toward oracle outputs *predicted* by data attribution.

Georgiev et al. 2024, "Attribute-to-Delete: Machine Unlearning via Datamodel Matching" (arXiv 2410.23232),
Algorithm 1: predict the outputs of a model retrained without the forget set F with datamodels,
f_hat(x) = f(x) - sum_{j in F} beta_j(x) (their `DatamodelWrappedModel`: the target's outputs minus the summed forget
rows of the attribution matrix, times `dm_multiplier`), then fine-tune on forget and retain items toward f_hat with
the squared loss of Oracle Matching (`oracle_matching`, which documents our margin-per-token adaptation).

Here beta comes from TRAK-style projected gradient features of the target itself (`unlearning.attribution`: one
Newton step of removing F under the empirical Fisher of the training items' loss gradients), computed once before
training (`Method.prepare_targets`) over the target's training data, taken to be the forget and retain items given
(the world's train.jsonl is exactly forget10 + retain90). It predicts every answer token's margin (the
directional derivative along the step), and those are the matching targets of the forget and retain tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.unlearning.attribution import check_attribution, predict_oracle_token_margins
from obliviate.unlearning.methods import METHODS
from obliviate.unlearning.methods.oracle_matching import MarginMatching


@METHODS.register("dmm")
@dataclass
class DatamodelMatching(MarginMatching):
    # tuned on the world (forget10), see the Datamodel Matching docs section
    lr: float = 1e-3
    steps: int = 100
    proj_dim: int = 16384  # k: width of the gradient sketch (N x k floats, twice: 210 MB for the world)
    damping: float = 1e-3  # lambda as a fraction of the mean squared norm of a training item's features
    scale: float = 1.0  # multiplies the predicted change (the reference code's dm_multiplier)
    seed: int = 0  # of the sketch

    def __post_init__(self):
        super().__post_init__()
        check_attribution(self.proj_dim, self.damping, "fisher", "dmm")

    def prepare_targets(self, model, tokenizer, encoded, pad_id):
        forget, retain = encoded["forget"], encoded["retain"]
        own, predicted = predict_oracle_token_margins(
            model,
            forget + retain,
            list(range(len(forget))),
            pad_id,
            proj_dim=self.proj_dim,
            damping=self.damping,
            scale=self.scale,
            seed=self.seed,
        )
        self._targets = {"forget": predicted[: len(forget)], "retain": predicted[len(forget) :]}
        shift = [float((p - m).mean()) if len(m) else 0.0 for p, m in zip(predicted, own)]
        self._predicted_shift = {"forget": shift[: len(forget)], "retain": shift[len(forget) :]}

    def finalize(self, model):
        self.__dict__.pop("_predicted_shift", None)
        return super().finalize(model)
