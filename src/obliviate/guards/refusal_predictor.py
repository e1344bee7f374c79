"""Prompt-refusal predictor (Reuter & Schulze 2023, "I'm Afraid I Can't Do That: Predicting Prompt Refusal in
Black-Box Generative Language Models", arXiv:2306.03423).

The paper labels a model's replies as refusals or not, then trains classifiers that predict, from the prompt
alone, whether the model will refuse; its bag-of-words models use word n-grams. Ours: TF-IDF over word 1-3-grams
+ logistic regression (scikit-learn), trained on the model's own greedy replies to the training prompts, labelled
by the refusal judge (the keyword judges GCG + JailbreakBench). As a guard it answers before any token is
generated: a prompt predicted to be refused with probability >= `threshold` gets the refusal at once (a cheap
pre-filter in front of a model, and a measure of how predictable its refusals are). `guard fit` reports its
accuracy on held-out prompts, whose labels come from the same model and judge.
"""

from __future__ import annotations

from dataclasses import dataclass

from obliviate.core.errors import UsageError
from obliviate.engine.hooks import Guard
from obliviate.guards.base import GUARDS, default_refusal
from obliviate.guards.text_classifier import TfidfLogistic


def judged_replies(model, tok, prompts: list[str], max_new_tokens: int = 32) -> tuple[list[str], list[bool]]:
    """The model's greedy replies (no guard) and whether each is a refusal (keyword judges GCG + JailbreakBench)."""
    from obliviate.engine.generation import generate
    from obliviate.judges.refusal import judge
    from obliviate.models.encode import prompt_ids

    replies = generate(model, tok, [prompt_ids(tok, p) for p in prompts], max_new_tokens, guards=[])
    return replies, [judge(p, r, ["gcg", "jbb"])[0] == "refusal" for p, r in zip(prompts, replies)]


def model_refusals(model, tok, prompts: list[str], max_new_tokens: int = 32) -> list[int]:
    """1 where the model's greedy reply (no guard) is judged a refusal."""
    return [int(r) for r in judged_replies(model, tok, prompts, max_new_tokens)[1]]


@GUARDS.register("refusal_predictor")
@dataclass
class RefusalPredictor(Guard):
    name = "refusal_predictor"
    description = "predicts from the prompt alone whether the model refuses (Reuter & Schulze 2023)"
    threshold: float = 0.5
    max_new_tokens: int = 32
    refusal: str = ""

    def __post_init__(self):
        self._clf: TfidfLogistic | None = None
        self.refusal = self.refusal or default_refusal()

    def on_request(self, text):
        return float(self._clf.proba([text or ""])[0])

    def on_prefill(self, hidden, rows, session):
        for r, row in enumerate(rows):
            if row.scores.get(self.name, 0.0) >= self.threshold:
                session.halt(r, self.name, self.refusal)

    @classmethod
    def fit(cls, model, tok, inputs, **options):
        guard = cls(**options)
        prompts = [r["prompt"] for r in inputs.get("policy_train") or []]
        labels = model_refusals(model, tok, prompts, guard.max_new_tokens)
        if len(set(labels)) < 2:
            raise UsageError(
                f"refusal_predictor: the model {'refused' if labels and labels[0] else 'answered'} "
                f"every one of the {len(prompts)} training prompts; nothing to predict"
            )
        guard._clf = TfidfLogistic(analyzer="word", ngram=(1, 3), C=1.0).fit(prompts, labels)
        guard._train_refusal_rate = sum(labels) / len(labels)
        return guard

    def report(self, model, tok, inputs):
        prompts = [r["prompt"] for r in inputs.get("policy_test") or []]
        if not prompts:
            return {}
        labels = model_refusals(model, tok, prompts, self.max_new_tokens)
        pred = [int(p >= self.threshold) for p in self._clf.proba(prompts)]
        out = {
            "accuracy_test": sum(a == b for a, b in zip(pred, labels)) / len(labels),
            "majority_baseline_test": max(sum(labels), len(labels) - sum(labels)) / len(labels),
            "refusal_rate_test": sum(labels) / len(labels),
            "n_test": float(len(labels)),
        }
        if getattr(self, "_train_refusal_rate", None) is not None:
            out["refusal_rate_train"] = self._train_refusal_rate
        return out

    def state(self):
        return {"classifier": self._clf.state() if self._clf else None}

    def load_state(self, state):
        if state.get("classifier"):
            self._clf = TfidfLogistic.from_state(state["classifier"])
