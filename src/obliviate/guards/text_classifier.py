"""A small prompt classifier for guards: TF-IDF n-grams + logistic regression (scikit-learn), stored as JSON.

Used by ECO's and GUARD's gates (character 2-6-grams across word boundaries, since the names in a prompt decide
whether it touches the forget target) and by the prompt-refusal predictor (word 1-3-grams). Its state (vocabulary, idf, weights) goes
into guard.json, so a guard directory holds no pickle.
"""

from __future__ import annotations

import numpy as np


class TfidfLogistic:
    # "char" (not "char_wb"): n-grams cross word boundaries, so a full name ("ek Duv") is a feature, not only its
    # parts; in the world, first and last names recur across people, and within-word n-grams flagged 6% of the
    # retain questions that share them with forget people (0% with "char" 2-6-grams; docs/benchmarks.md, ECO)
    def __init__(self, analyzer: str = "char", ngram: tuple[int, int] = (2, 6), C: float = 10.0):
        self.analyzer, self.ngram, self.C = analyzer, tuple(ngram), C
        self._vec = self._clf = None

    def _vectorizer(self, vocabulary=None):
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(
            analyzer=self.analyzer, ngram_range=self.ngram, sublinear_tf=True, lowercase=True, vocabulary=vocabulary
        )

    def fit(self, texts: list[str], labels: list[int]) -> "TfidfLogistic":
        from sklearn.linear_model import LogisticRegression

        self._vec = self._vectorizer()
        X = self._vec.fit_transform(texts)
        self._clf = LogisticRegression(C=self.C, max_iter=5000, class_weight="balanced").fit(X, labels)
        return self

    def proba(self, texts: list[str]) -> np.ndarray:
        """P(label 1) per text."""
        X = self._vec.transform(texts)
        return 1.0 / (1.0 + np.exp(-(X @ self._coef + self._b)))

    @property
    def _coef(self) -> np.ndarray:
        return self._clf.coef_[0] if hasattr(self._clf, "coef_") else self._clf["coef"]

    @property
    def _b(self) -> float:
        return float(self._clf.intercept_[0]) if hasattr(self._clf, "intercept_") else self._clf["intercept"]

    def state(self) -> dict:
        vocab = sorted(self._vec.vocabulary_, key=self._vec.vocabulary_.get)
        return {
            "analyzer": self.analyzer,
            "ngram": list(self.ngram),
            "C": self.C,
            "vocabulary": vocab,
            "idf": self._vec.idf_.tolist(),
            "coef": [float(x) for x in self._coef],
            "intercept": self._b,
        }

    @classmethod
    def from_state(cls, state: dict) -> "TfidfLogistic":
        """The classifier `state()` wrote; a state of another shape is a ValueError that says what is wrong (the
        guard loader turns it into a one-line error naming guard.json)."""
        check_state(state)
        self = cls(state["analyzer"], tuple(state["ngram"]), state["C"])
        self._vec = self._vectorizer({t: i for i, t in enumerate(state["vocabulary"])})
        self._vec.idf_ = np.asarray(state["idf"])
        self._clf = {"coef": np.asarray(state["coef"]), "intercept": float(state["intercept"])}
        return self


def check_state(state) -> None:
    """ValueError unless `state` is what `TfidfLogistic.state()` writes: a known analyzer, an n-gram range
    [a, b] with 1 <= a <= b, numbers C and intercept, a vocabulary of distinct strings, and as many idf values
    and coefficients as it has terms."""

    def numbers(v):
        return isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)

    if not isinstance(state, dict):
        raise ValueError(f"the classifier state must be an object, got {type(state).__name__}")
    missing = [k for k in ("analyzer", "ngram", "C", "vocabulary", "idf", "coef", "intercept") if k not in state]
    if missing:
        raise ValueError(f"the classifier state lacks {', '.join(missing)}")
    ngram, vocab = state["ngram"], state["vocabulary"]
    if state["analyzer"] not in ("word", "char", "char_wb"):
        raise ValueError("the classifier's analyzer must be word, char or char_wb")
    if not (
        isinstance(ngram, list) and len(ngram) == 2 and all(type(n) is int for n in ngram) and 1 <= ngram[0] <= ngram[1]
    ):
        raise ValueError("the classifier's ngram must be [a, b] with 1 <= a <= b")
    if not numbers([state["C"], state["intercept"]]):
        raise ValueError("the classifier's C and intercept must be numbers")
    if not (isinstance(vocab, list) and all(isinstance(t, str) for t in vocab) and len(set(vocab)) == len(vocab)):
        raise ValueError("the classifier's vocabulary must be a list of distinct strings")
    for key in ("idf", "coef"):
        if not numbers(state[key]) or len(state[key]) != len(vocab):
            raise ValueError(f"the classifier's {key} must be {len(vocab)} numbers, one per vocabulary term")


def conformal_threshold(positive_scores, miss_rate: float) -> float:
    """Split-conformal threshold (Vovk et al. 2005; Angelopoulos & Bates 2021, Sec. 1): flagging scores >= t
    misses at most `miss_rate` of new positives, in expectation, when the calibration scores are exchangeable with
    them. t is the floor(miss_rate * (n + 1))-th smallest calibration score (the smallest one when that is 0)."""
    s = np.sort(np.asarray(positive_scores, dtype=float))
    k = int(np.floor(miss_rate * (len(s) + 1)))
    return float(s[max(k, 1) - 1])


def gate_texts(tok, questions: list[str]) -> list[str]:
    """Each question as a gate may see it: raw (evaluate, the server) and inside the chat template (prompts given
    as token ids only, whose text is their decoding)."""
    from obliviate.models.encode import prompt_ids

    return questions + [tok.decode(prompt_ids(tok, q), skip_special_tokens=True) for q in questions]


def fit_forget_gate(tok, inputs: dict, miss_rate: float, seed: int, who: str) -> tuple[TfidfLogistic, float]:
    """(gate, threshold) for the unlearning guards: character n-gram TF-IDF + logistic regression on forget
    versus retain questions; a seeded quarter of the forget questions is held out to set the split-conformal
    threshold at `miss_rate` (capped at 0.5)."""
    import random

    from obliviate.core.errors import UsageError

    forget = [it.question for it in inputs.get("forget") or []]
    retain = [it.question for it in (inputs.get("retain_train") or inputs.get("retain") or [])]
    if len(forget) < 4 or len(retain) < 2:
        raise UsageError(f"{who}: needs at least 4 forget and 2 retain questions (has {len(forget)} and {len(retain)})")
    cal = set(random.Random(seed).sample(range(len(forget)), max(2, len(forget) // 4)))
    train_f = [q for i, q in enumerate(forget) if i not in cal]
    gate = TfidfLogistic().fit(
        gate_texts(tok, train_f) + gate_texts(tok, retain), [1] * (2 * len(train_f)) + [0] * (2 * len(retain))
    )
    cal_scores = gate.proba(gate_texts(tok, [forget[i] for i in sorted(cal)]))
    return gate, min(0.5, conformal_threshold(cal_scores, miss_rate))


def flag_rate(gate: TfidfLogistic, threshold: float, items) -> float | None:
    qs = [it.question for it in items]
    return float((gate.proba(qs) >= threshold).mean()) if qs else None
