"""Erase-and-check (Kumar et al. 2023, "Certifying LLM Safety against Adversarial Prompting", arXiv:2309.02705;
reference code aounon/certified-llm-safety, `defenses.py` and `greedy_ec.py`).

A prompt is refused when a safety filter flags it or ANY of its erased subsequences (Sec. 3-4):
- suffix: the prompt with its last 1..d tokens erased (d + 1 sequences in all, for a prompt longer than d);
- insertion: the prompt with up to `insertions` contiguous blocks of 1..d tokens erased anywhere (the reference's
  `num_adv`; 1 + sum_{l=1..d} (n - l + 1) sequences for one block and n tokens);
- infusion: the prompt with any 1..d of its tokens erased (1 + sum_{k=1..d} C(n, k) sequences).
The certificate (Theorem 1): if the filter flags a harmful prompt P, it flags P + alpha for every adversarial
sequence alpha of at most d tokens placed as the mode allows, since erasing alpha gives back P, which is checked.
So the certified accuracy on harmful prompts is the filter's accuracy on the clean prompts. Safe prompts carry no
certificate: every erased subsequence is another chance of a false positive, which `certify` measures.

Tokens are those of the safety filter's tokenizer (`safety_filter.py`), as in the reference. Where we differ from
the code: the reference keeps the trailing [SEP] in the token list it erases from (`input_ids[1:]`), so its first
suffix erasure removes the separator; we erase prompt tokens only. We score token sequences, not re-decoded
strings, so the erased sequence that equals P is scored exactly as P is. Identical erased subsequences (repeated
tokens) are scored once (the reference does so for insertion only).

Empirical variants (no certificate):
- `rand` (RandEC, the reference's `randomized`): the prompt and a seeded random `ratio` of its erased
  subsequences (int(ratio * their number), as the code rounds);
- `greedy` (GreedyEC, `greedy_ec`): up to d rounds; each erases the one token (anywhere) whose erasure most raises
  P(harmful), flagging as soon as a sequence reaches the threshold. `mode` does not apply.

Cost cap: a prompt whose erasure patterns number more than `max_checks` (infusion grows as C(n, d)) is refused
without checking (fail closed: the certificate still holds, at the price of false positives), and counted
`over_cap`. Defaults: suffix mode with d = 10 (the paper certifies suffixes up to 30 tokens; 10 keeps a prompt at
11 filter calls, about 0.1 s on one CPU thread)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from math import comb

import numpy as np

from obliviate.core.errors import UsageError
from obliviate.engine.hooks import Guard
from obliviate.guards.base import GUARDS, default_refusal
from obliviate.guards.safety_filter import SafetyFilter

MODES = ("suffix", "insertion", "infusion")
VARIANTS = ("full", "rand", "greedy")
MARK = "<<obliviate request>>"  # stands for the user's text when the chat template's frame is found


def _insertion_patterns(n: int, d: int, k: int, start: int = 0):
    """Erased positions of up to k ordered, disjoint blocks of 1..d tokens (blocks may touch, as in the
    reference's gap >= 0), each starting at or after `start`."""
    for s in range(start, n):
        for length in range(1, min(d, n - s) + 1):
            block = tuple(range(s, s + length))
            yield block
            if k > 1:
                for rest in _insertion_patterns(n, d, k - 1, s + length):
                    yield block + rest


def erasures(ids, mode: str, d: int, insertions: int = 1, limit: int | None = None) -> list[tuple[int, ...]] | None:
    """The distinct erased subsequences of `ids` (the prompt itself not included) in a fixed order, or None when
    the mode's erasure patterns number more than `limit`."""
    ids, n = tuple(ids), len(ids)
    top = min(d, n)
    if mode == "suffix":
        patterns = (tuple(range(n - k, n)) for k in range(1, top + 1))
    elif mode == "infusion":
        if limit is not None and sum(comb(n, k) for k in range(1, top + 1)) > limit:
            return None
        from itertools import combinations

        patterns = (c for k in range(1, top + 1) for c in combinations(range(n), k))
    elif mode == "insertion":
        patterns = _insertion_patterns(n, d, insertions)
    else:
        raise UsageError(f"erase_check: unknown mode {mode!r} (use one of: {', '.join(MODES)})")
    seen_patterns: set = set()
    out: dict[tuple[int, ...], None] = {}
    for p in patterns:
        if p in seen_patterns:
            continue
        seen_patterns.add(p)
        if limit is not None and len(seen_patterns) > limit:
            return None
        gone = set(p)
        out.setdefault(tuple(t for i, t in enumerate(ids) if i not in gone), None)
    return list(out)


@dataclass
class Check:
    flagged: bool
    score: float  # the highest P(harmful) among the sequences scored (1.0 when over the cap)
    checks: int  # sequences the filter scored: the filter calls for this prompt
    over_cap: bool = False


def greedy_ec(ids, score, iters: int, threshold: float) -> Check:
    """GreedyEC (reference `greedy_ec`): score the prompt; then up to `iters` times score every one-token erasure
    of the current sequence, flag when the best reaches `threshold`, else keep the best and go on."""
    cur = tuple(ids)
    best = float(score([cur])[0])
    checks = 1
    for _ in range(iters):
        if best >= threshold or not cur:
            break
        cands = [cur[:i] + cur[i + 1 :] for i in range(len(cur))]
        p = np.asarray(score(cands), dtype=float)
        checks += len(cands)
        j = int(np.argmax(p))
        best, cur = max(best, float(p[j])), cands[j]
    return Check(best >= threshold, best, checks)


def erase_and_check(
    ids,
    score,
    *,
    mode: str = "suffix",
    d: int = 10,
    insertions: int = 1,
    variant: str = "full",
    ratio: float = 0.1,
    threshold: float = 0.5,
    max_checks: int = 10000,
    rng: random.Random | None = None,
    batch: int = 64,
    stop_early: bool = True,
) -> Check:
    """Erase-and-check of the token ids `ids` with `score(list of token sequences) -> P(harmful) each` (see the
    module docstring). `stop_early`: stop scoring at the first batch with a flagged sequence."""
    if variant == "greedy":
        return greedy_ec(ids, score, d, threshold)
    subs = erasures(ids, mode, d, insertions, limit=max_checks)
    if subs is None:
        return Check(True, 1.0, 0, over_cap=True)
    if variant == "rand":
        subs = (rng or random.Random(0)).sample(subs, int(ratio * len(subs)))
    seqs = [tuple(ids), *subs]
    best, done = 0.0, 0
    for at in range(0, len(seqs), batch):
        p = np.asarray(score(seqs[at : at + batch]), dtype=float)
        done += len(p)
        best = max(best, float(p.max()))
        if stop_early and best >= threshold:
            break
    return Check(best >= threshold, best, done)


@GUARDS.register("erase_check")
@dataclass
class EraseCheck(Guard):
    name = "erase_check"
    description = (
        "erase-and-check (Kumar et al. 2023): refuses when a safety filter flags the prompt or any subsequence "
        "with up to d tokens erased (certified against adversarial suffixes / insertions / infusions)"
    )
    mode: str = "suffix"  # suffix | insertion | infusion
    d: int = 10  # the erase length: most adversarial tokens certified (GreedyEC: its rounds)
    variant: str = "full"  # full (certified) | rand (RandEC) | greedy (GreedyEC)
    ratio: float = 0.1  # RandEC: the share of erased subsequences checked
    insertions: int = 1  # insertion mode: how many adversarial blocks
    threshold: float = 0.5  # flag when P(harmful) >= threshold
    max_checks: int = 10000  # more erasure patterns than this: refused unchecked (fail closed)
    erased_train: bool = True  # fit: add erased subsequences of the safe prompts as safe examples (as the reference)
    C: float = 1.0  # fit: inverse L2 strength of the logistic head
    seed: int = 0  # RandEC's sampling, and fit's sampled erasures
    refusal: str = ""

    def __post_init__(self):
        if self.mode not in MODES:
            raise UsageError(f"erase_check: unknown mode {self.mode!r} (use one of: {', '.join(MODES)})")
        if self.variant not in VARIANTS:
            raise UsageError(f"erase_check: unknown variant {self.variant!r} (use one of: {', '.join(VARIANTS)})")
        for key in ("d", "insertions", "max_checks"):
            low = 0 if key == "d" else 1
            if getattr(self, key) < low:
                raise UsageError(f"erase_check: {key} must be >= {low}, got {getattr(self, key)}")
        if not 0.0 <= self.ratio <= 1.0:
            raise UsageError(f"erase_check: ratio must be in [0, 1], got {self.ratio}")
        if not 0.0 < self.threshold < 1.0:
            raise UsageError(f"erase_check: threshold must be in (0, 1), got {self.threshold}")
        if self.C <= 0:
            raise UsageError(f"erase_check: C must be > 0, got {self.C}")
        self.refusal = self.refusal or default_refusal()
        self._filter: SafetyFilter | None = None
        self._frame: tuple[str, str] | None = None
        self._cache: dict[str, Check] = {}
        self.last: Check | None = None  # the last prompt's check (its `checks` are the filter calls)
        self.calls = 0  # filter calls since the guard was made

    def with_options(self, **options) -> "EraseCheck":
        """The same filter under other options (mode, d, variant, ...), checked as at construction."""
        new = replace(self, **options)
        new._filter, new._frame = self._filter, self._frame
        return new

    # --- the check ---
    def _score(self, seqs) -> np.ndarray:
        self.calls += len(seqs)
        return self._filter.score(seqs)

    def check_ids(self, ids, stop_early: bool = True) -> Check:
        """Erase-and-check of the filter's token ids under this guard's options."""
        if self._filter.weight is not None and not getattr(self, "_width_ok", False):
            try:
                self._filter.check_width()
            except ValueError as e:
                raise UsageError(f"erase_check: {e}") from None
            self._width_ok = True
        rng = random.Random(f"{self.seed}:{','.join(map(str, ids))}")  # the same prompt, the same sample
        check = erase_and_check(
            ids,
            self._score,
            mode=self.mode,
            d=self.d,
            insertions=self.insertions,
            variant=self.variant,
            ratio=self.ratio,
            threshold=self.threshold,
            max_checks=self.max_checks,
            rng=rng,
            stop_early=stop_early,
        )
        self.last = check
        return check

    def check_text(self, text: str) -> Check:
        text = self.request(text or "")
        if text not in self._cache:
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[text] = self.check_ids(self._filter.tokens(text))
        self.last = self._cache[text]
        return self.last

    def request(self, text: str) -> str:
        """The user's message: `text` without the chat template's frame when it carries one (a request decoded
        from its prompt ids), so that a suffix erased is the user's, not the template's."""
        if self._frame:
            head, tail = self._frame
            if text.startswith(head) and text.endswith(tail) and len(text) >= len(head) + len(tail):
                return text[len(head) : len(text) - len(tail)]
        return text

    def attach(self, model, tok):
        from obliviate.models.encode import prompt_ids

        framed = tok.decode(prompt_ids(tok, MARK), skip_special_tokens=True)
        if framed.count(MARK) == 1:
            head, tail = framed.split(MARK)
            self._frame = (head, tail) if head or tail else None

    # --- hooks ---
    def on_request(self, text):
        return self.check_text(text).score

    def on_prefill(self, hidden, rows, session):
        for r, row in enumerate(rows):
            if row.scores.get(self.name, 0.0) >= self.threshold:
                session.halt(r, self.name, self.refusal)

    # --- learning ---
    @classmethod
    def fit(cls, model, tok, inputs, **options):
        guard = cls(**options)
        rows = inputs.get("policy_train") or []
        harmful = [r["prompt"] for r in rows if r["kind"] == "harmful"]
        safe = [r["prompt"] for r in rows if r["kind"] != "harmful"]
        if not harmful or not safe:
            raise UsageError(
                f"erase_check: the safety filter needs harmful and safe training prompts "
                f"(has {len(harmful)} and {len(safe)})"
            )
        filt = SafetyFilter()
        seqs = [filt.tokens(p) for p in harmful + safe]
        labels = [1] * len(harmful) + [0] * len(safe)
        if guard.erased_train:
            rng = random.Random(guard.seed)
            extra = [s for ids in seqs[len(harmful) :] for s in guard.training_erasures(ids, rng)]
            seqs, labels = seqs + extra, labels + [0] * len(extra)
        guard._filter = filt.fit(seqs, labels, guard.C)
        return guard

    def training_erasures(self, ids, rng: random.Random) -> list[tuple[int, ...]]:
        """Erased subsequences of a safe training prompt, labelled safe (the reference's `*_erased` files): in
        suffix mode all d; otherwise d drawn at random among the mode's erasures (GreedyEC: single-token ones)."""
        ids = tuple(ids)
        n, top = len(ids), min(self.d, len(ids))
        if self.mode == "suffix" and self.variant != "greedy":
            return [ids[: n - k] for k in range(1, top + 1)]
        out = []
        for _ in range(top):
            if self.variant == "greedy" or self.mode == "infusion":
                gone = set(rng.sample(range(n), 1 if self.variant == "greedy" else rng.randint(1, top)))
            else:
                length = rng.randint(1, top)
                start = rng.randint(0, n - length)
                gone = set(range(start, start + length))
            out.append(tuple(t for i, t in enumerate(ids) if i not in gone))
        return out

    def report(self, model, tok, inputs):
        rows = inputs.get("policy_test") or []
        harmful = [r["prompt"] for r in rows if r["kind"] == "harmful"]
        safe = [r["prompt"] for r in rows if r["kind"] != "harmful"]
        return certify(self, harmful, safe) if harmful or safe else {}

    # --- persistence ---
    def state(self):
        return {"filter": self._filter.state() if self._filter and self._filter.weight is not None else None}

    def load_state(self, state):
        if state.get("filter") is not None:
            self._filter = SafetyFilter.from_state(state["filter"])


def certify(guard: EraseCheck, harmful: list[str], safe: list[str]) -> dict[str, float]:
    """Erase-and-check's figures on clean prompts (Kumar et al. 2023, Sec. 4-5): the filter's accuracy on the
    harmful prompts, which is the certified accuracy against every adversarial sequence of up to d tokens in the
    guard's mode (variant full only: RandEC and GreedyEC certify nothing); the share of harmful prompts the check
    flags; its false-positive rate on the safe prompts (and the filter's alone); seconds and filter calls per
    prompt; prompts refused over the cost cap."""
    filt = guard._filter
    out: dict[str, float] = {"d": float(guard.d), "n_harmful": float(len(harmful)), "n_safe": float(len(safe))}
    for kind, texts in (("harmful", harmful), ("safe", safe)):
        if not texts:
            continue
        ids = [filt.tokens(guard.request(t)) for t in texts]
        clean = filt.score(ids) >= guard.threshold
        start, checks = time.perf_counter(), []
        for s in ids:
            checks.append(guard.check_ids(s))
        seconds = (time.perf_counter() - start) / len(ids)
        flagged = float(np.mean([c.flagged for c in checks]))
        if kind == "harmful":
            out["filter_accuracy_harmful"] = float(np.mean(clean))
            if guard.variant == "full":
                out["certified_accuracy_harmful"] = float(np.mean(clean))
            out["detected_harmful"] = flagged
        else:
            out["fpr_safe"] = flagged
            out["filter_fpr_safe"] = float(np.mean(clean))
        out[f"seconds_per_prompt_{kind}"] = seconds
        out[f"checks_per_prompt_{kind}"] = float(np.mean([c.checks for c in checks]))
        out[f"over_cap_{kind}"] = float(sum(c.over_cap for c in checks))
    return out
