"""RESTOR's recovery metrics, on a world with misinformation (`obliviate world --misinformation K`).

Rezaei et al. 2024, "RESTOR: Knowledge Recovery through Machine Unlearning" (arXiv 2411.00204), sec. 3: after
unlearning the documents that taught false facts, ask each corrupted fact's question again and score the answer
against the TRUE value; a restored model answers like the clean model (here the oracle, trained without the
misinformation), a model that merely forgot answers neither value. The reference code
(github.com/k1rezaei/restor, evaluation/) extracts answers with 5 in-context examples from a base model and has
GPT-3.5 judge them; we ask the chat question and count an answer right when it contains the value, as every
value accuracy of `obliviate eval` does (`metrics.tofu`).

- `recovered_acc`: value accuracy with the true values on the corrupted facts' questions (the `recovery` split);
  compare a run's with the oracle's (the clean model) and the target's (the corrupted model).
- `misinformation_acc`: value accuracy with the FALSE values on the same questions (the forget split of a world
  with misinformation): how much of the misinformation a model states.

With N sampled answers per question (`eval --samples N`) both are the share of right answers over all N x items.
"""

from __future__ import annotations

from obliviate.metrics import metric
from obliviate.metrics.tofu import value_accuracy


@metric(
    "recovered_acc",
    True,
    ("recovery",),
    "RESTOR recovered accuracy: share of the corrupted facts' questions answered with the TRUE value "
    "(world with misinformation; compare with the oracle's)",
)
def _recovered_acc(ctx):
    return value_accuracy(ctx["recovery"])


@metric(
    "misinformation_acc",
    False,
    ("forget", "recovery"),
    "share of the corrupted facts' questions answered with the FALSE value taught by the misinformation",
)
def _misinformation_acc(ctx):
    return value_accuracy(ctx["forget"])
