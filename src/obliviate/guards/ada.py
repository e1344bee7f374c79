"""Any-Depth Alignment (ADA; "Any-Depth Alignment: Unlocking Innate Safety Alignment of LLMs to Any-Depth",
arXiv:2510.18081, 2025): re-inject the assistant header mid-reply, so that the model's own safety judgement,
which alignment trains to fire right after the header, fires at any depth of the reply.

Every `every` generated tokens (25 by default, as the paper's evaluation does; and once right after the prompt,
which covers prefilled replies) the guard feeds the chat template's assistant header
(`models.encode.assistant_header`, e.g. "<|im_end|>\\n<|im_start|>assistant\\n") after the reply so far, on the
KV cache, and crops the cache back exactly afterwards (`Session.probe`), so the reply itself is untouched:

- ADA-RK ("rethinking"): greedily generates `lookahead` tokens after the header and halts the reply when they
  are a refusal (the keyword judges GCG + JailbreakBench; the paper reads the refusal from the model's own
  continuation too).
- ADA-LP ("linear probe"): reads the hidden state of layer `layer` at the header's role token (the token
  spelling the assistant's role, e.g. "assistant"; else the header's last token) and applies a logistic probe
  fitted on harmful answers versus the model's own greedy benign replies, cut at several depths (`fit_depths`);
  halts when p >= `threshold`, set so that at most `benign_fpr` of the benign training sequences are flagged
  by probes that did not train on them or on their phrasing (5-fold out-of-fold probabilities, folds by phrasing
  group), and otherwise as high as lets at most `harmful_miss` of the harmful ones through (at least 0.5). The layer is chosen by held-out accuracy among all layers (the paper picks a middle layer
  per model).

A halted reply is replaced by `refusal` with finish_reason "content_filter".
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

import torch

from obliviate.core.errors import UsageError
from obliviate.engine.hooks import Guard
from obliviate.guards.base import GUARDS, default_refusal

ROLE_WORDS = ("assistant", "model", "bot", "gpt", "ai")


def role_position(tok, header: list[int]) -> int:
    """Index in `header` of the token that names the assistant's role (last match), else the last token."""
    for i in range(len(header) - 1, -1, -1):
        if tok.decode([header[i]]).strip().lower().strip("<>|:") in ROLE_WORDS:
            return i
    return len(header) - 1


@dataclass
class _ADA(Guard):
    every: int = 25
    refusal: str = ""

    def __post_init__(self):
        if self.every < 1:
            raise UsageError(f"{self.name}: every must be >= 1")
        self.refusal = self.refusal or default_refusal()
        self._header: list[int] = []

    def attach(self, model, tok):
        from obliviate.models.encode import assistant_header, chat_formatted

        if not chat_formatted(tok):
            raise UsageError(
                f"guard {self.name} re-injects the assistant header, and this model's prompts are not "
                "in a chat template"
            )
        self._header = assistant_header(tok)
        self._tok = tok

    def flagged(self, session) -> list[bool]:
        raise NotImplementedError

    def check(self, session):
        for r, hit in enumerate(self.flagged(session)):
            if hit and session.active[r]:
                session.halt(r, self.name, self.refusal)

    def on_prefill(self, hidden, rows, session):
        self.check(session)

    def on_step(self, step, ids, session):
        self.check(session)


@GUARDS.register("ada_rk")
@dataclass
class AdaRK(_ADA):
    name = "ada_rk"
    description = "Any-Depth Alignment, rethinking: header re-injected every k tokens, lookahead judged"
    lookahead: int = 8

    def flagged(self, session):
        from obliviate.judges.refusal import judge

        looks = session.probe(self._header, lookahead=self.lookahead)["lookahead"]
        texts = [self._tok.decode(t, skip_special_tokens=True) for t in looks.tolist()]
        return [judge("", t, ["gcg", "jbb"])[0] == "refusal" for t in texts]


@GUARDS.register("ada_lp")
@dataclass
class AdaLP(_ADA):
    name = "ada_lp"
    description = "Any-Depth Alignment, linear probe on the re-injected header's role token"
    layer: int = -1  # hidden-state index (set by fit)
    threshold: float = 0.5
    fit_depths: str = "0,5,10,20,40"  # answer tokens before the header, in the probe's training sequences
    benign_fpr: float = 0.01  # the threshold flags at most this share of the benign training sequences
    harmful_miss: float = 0.01  # ... and is as high as lets at most this share of the harmful ones through
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        self._w = None  # [d], [1]: logistic probe

    def attach(self, model, tok):
        super().attach(model, tok)
        self._role = role_position(tok, self._header)

    def prob(self, states: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(states.float() @ self._w[:-1] + self._w[-1])

    def flagged(self, session):
        hs = session.probe(self._header, hidden=True)["hidden"][self.layer][:, self._role]  # [B, d]
        return (self.prob(hs) >= self.threshold).tolist()

    @staticmethod
    def sequences(tok, rows, depths, header) -> tuple[list[list[int]], list[int]]:
        from obliviate.models.encode import answer_ids, prompt_ids

        seqs, labels = [], []
        for r in rows:
            ans = answer_ids(tok, r["answer"])[:-1]
            for k in depths:
                seqs.append(prompt_ids(tok, r["prompt"]) + ans[:k] + header)
                labels.append(int(r["kind"] == "harmful"))
        return seqs, labels

    @classmethod
    def fit(cls, model, tok, inputs, **options):
        """Probe training data: harmful rows with their harmful answers and benign rows with their answers (the
        world's policy_train; public prompt sets carry no answers, so the model's own greedy replies are used),
        each cut at every depth in `fit_depths` and followed by the header."""
        import numpy as np
        from sklearn.linear_model import LogisticRegression

        from obliviate.guards.base import hidden_at

        guard = cls(**options)
        guard.attach(model, tok)
        rows = [r for r in inputs.get("policy_train") or [] if r["kind"] in ("harmful", "benign")]
        # benign rows get the model's own greedy replies: what the probe reads at run time (a dataset's benign
        # answers can differ; measured on the world's refusal-SFT model, probing dataset answers gave 0.37
        # over-refusal on benign look-alikes); harmful rows keep their harmful answers, what a prefill injects
        rows = _with_answers(model, tok, [r if r["kind"] == "harmful" else {**r, "answer": ""} for r in rows])
        if len({r["kind"] for r in rows}) < 2:
            raise UsageError("ada_lp: needs harmful and benign training rows")
        depths = [int(x) for x in guard.fit_depths.split(",") if x.strip()]
        seqs, labels = cls.sequences(tok, rows, depths, guard._header)
        pos = guard._role - len(guard._header)
        X = hidden_at(model, seqs, pos, tok.pad_token_id or 0).numpy()  # [N, L+1, d]
        y = np.array(labels)
        # choose the layer on a held-out fifth of the prompts (all depths of a prompt on the same side)
        idx = list(range(len(rows)))
        random.Random(guard.seed).shuffle(idx)
        val = set(idx[: max(1, len(idx) // 5)])
        is_val = np.array([i // len(depths) in val for i in range(len(seqs))])
        best = (-1.0, 1)
        for layer in range(1, X.shape[1]):
            clf = LogisticRegression(max_iter=2000).fit(X[~is_val, layer], y[~is_val])
            best = max(best, (clf.score(X[is_val, layer], y[is_val]), layer))
        guard.layer = best[1]
        clf = LogisticRegression(max_iter=2000).fit(X[:, guard.layer], y)
        guard._w = torch.tensor(np.concatenate([clf.coef_[0], clf.intercept_]), dtype=torch.float32)
        # the threshold comes from out-of-fold probabilities: a probe's scores on its own training replies are
        # overconfident, and a threshold set on them flags unseen benign replies far more often than `benign_fpr`.
        # Folds hold whole phrasing groups (an id "topic-kind-07-object" is group "topic-kind-07"; every depth of a
        # prompt goes with it), since what a guard meets at run time is new phrasings, not new prompts of known ones
        groups = [phrasing_group(r.get("id"), n) for n, r in enumerate(rows)]
        folds = np.array(
            [hash_fold(zlib.crc32(groups[i // len(depths)].encode()), guard.seed) for i in range(len(seqs))]
        )
        oof = np.zeros(len(y))
        for f in range(5):
            test = folds == f
            if test.any() and len(set(y[~test])) == 2:
                oof[test] = (
                    LogisticRegression(max_iter=2000)
                    .fit(X[~test, guard.layer], y[~test])
                    .predict_proba(X[test, guard.layer])[:, 1]
                )
        # as high as the harmful sequences allow (at most `harmful_miss` of them below it), and never so low that
        # more than `benign_fpr` of the benign ones pass it: new phrasings of benign requests score higher than the
        # training ones, harmful ones stay near 1 (measured on the world's refusal-SFT model; docs/benchmarks.md)
        guard.threshold = probe_threshold(oof, y, guard.benign_fpr, guard.harmful_miss)
        guard._val_accuracy = best[0]
        return guard

    def report(self, model, tok, inputs):
        from obliviate.guards.base import hidden_at

        rows = _with_answers(
            model,
            tok,
            [
                r if r["kind"] == "harmful" else {**r, "answer": ""}
                for r in inputs.get("policy_test") or []
                if r["kind"] in ("harmful", "benign")
            ],
        )
        if len({r["kind"] for r in rows}) < 2:
            return {}
        depths = [int(x) for x in self.fit_depths.split(",") if x.strip()]
        seqs, labels = self.sequences(tok, rows, depths, self._header)
        X = hidden_at(model, seqs, self._role - len(self._header), tok.pad_token_id or 0)[:, self.layer]
        hit = (self.prob(X) >= self.threshold).tolist()
        out = {
            "layer": float(self.layer),
            "probe_accuracy_test": sum(h == bool(y) for h, y in zip(hit, labels)) / len(labels),
        }
        if getattr(self, "_val_accuracy", None) is not None:
            out["probe_accuracy_val"] = self._val_accuracy
        return out

    def tensors(self):
        return {"probe": self._w}

    def load_tensors(self, tensors):
        self._w = tensors["probe"]


def probe_threshold(p, y, benign_fpr: float, harmful_miss: float) -> float:
    """max(0.5, the (1 - benign_fpr) quantile of the benign scores, the harmful_miss quantile of the harmful ones)
    (numpy's linear-interpolation quantiles)."""
    import numpy as np

    p, y = np.asarray(p, dtype=float), np.asarray(y)
    floor = float(np.quantile(p[y == 0], 1 - benign_fpr)) if (y == 0).any() else 0.5
    ceiling = float(np.quantile(p[y == 1], harmful_miss)) if (y == 1).any() else 0.5
    return max(0.5, floor, ceiling)


def phrasing_group(row_id, n: int) -> str:
    """The id without its last dash-separated part (the object a template was filled with); else the row's index."""
    return row_id.rsplit("-", 1)[0] if isinstance(row_id, str) and "-" in row_id else f"row{n}"


def hash_fold(i: int, seed: int, k: int = 5) -> int:
    """A fixed pseudo-random fold in [0, k) for item i."""
    return random.Random(seed * 1_000_003 + i).randrange(k)


def _with_answers(model, tok, rows: list[dict], max_new_tokens: int = 40) -> list[dict]:
    """Rows with an `answer`; rows without one get the model's own greedy reply (run-time text, never saved)."""
    from obliviate.engine.generation import generate
    from obliviate.models.encode import prompt_ids

    need = [r for r in rows if not r.get("answer")]
    if need:
        replies = generate(model, tok, [prompt_ids(tok, r["prompt"]) for r in need], max_new_tokens, guards=[])
        filled = {id(r): a for r, a in zip(need, replies)}
        rows = [r | {"answer": filled[id(r)]} if id(r) in filled else r for r in rows]
    return rows
