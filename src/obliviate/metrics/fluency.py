"""Fluency of generated answers, without a classifier, and the collapse alarm built on it.

OpenUnlearning's `forget_Q_A_gibberish` scores each generation with a hub gibberish classifier; obliviate runs
offline and scores the text itself, with the repetition statistic of Welleck et al. 2020 ("Neural Text Generation
with Unlikelihood Training", sec. 6, seq-rep-n): the share of a sequence's n-grams that repeat an earlier one,

    seq-rep-n(x) = 1 - |unique n-grams(x)| / |n-grams(x)|.

Over-unlearned models degenerate into loops ("the the the", one phrase again and again, a run of replacement
characters from broken byte-level tokens) or stop at once; both are what this catches. The text is split into
units, lower-cased words (\\w+ runs) and single punctuation or symbol characters (as a tokenizer would keep them),
a word that is one pattern of 1-4 characters said three times or more ("nnnnnnnn", "ameameame") counting as
that many units, and an answer's fluency is 1 - seq-rep-2 over its units: bigrams, since the answers are one
sentence (Welleck's 4-grams over 100+ token continuations see no repeat in ten words). An answer without any word
scores 0, a one-unit answer 1. A split's fluency is the mean over its generated answers (all N of them with
--samples N). Word salad without repetition reads as fluent: the statistic measures degeneration, not sense.

The collapse alarm (`collapse_reasons`) reads a run's metrics and names what is beyond its threshold:
- `forget_fluency` or `retain_fluency` below FLUENCY_FLOOR = 0.5: on average half of an answer's bigrams repeat.
  A model that still writes sentences scores about 1; one that loops a pattern of p units through an answer of
  L units scores about p / L (for 32 generated tokens, well under 0.5);
- `privleak` above PRIVLEAK_CEILING = 50 (%): MUSE's privleak is 0 at the oracle, -100 for the target, and
  positive when the forget set has become *less* likely than text the model never saw (over-unlearning). With the
  oracle's Min-K% AUC near 0.5, privleak 50 means the model's own member AUC fell to 0.25: the forget set is now
  recognisable by its absence. OpenUnlearning's users report privleak 5,215 and MIA AUC 2e-5 after default
  settings; MUSE counts |privleak| within a few % as a match with retraining.
  Not on a RESTOR world (the metrics hold `recovered_acc`): there the forget set is false values of facts that the
  model keeps knowing, and a model that unlearns them well finds them less likely than the holdout's unseen facts,
  which is privleak > 0 without any collapse (world, 50 false facts: NPO recovers 68% of the true answers, keeps
  retain value accuracy 0.96 and has privleak 69; docs/evidence.md).
"""

from __future__ import annotations

import re

from obliviate.metrics import metric

FLUENCY_N = 2
FLUENCY_FLOOR = 0.5
PRIVLEAK_CEILING = 50.0

_UNIT = re.compile(r"\w+|[^\w\s]")
_LOOP = re.compile(r"(\w{1,4}?)\1{2,}")  # a word that repeats one short pattern: "nnnnnnnn", "ameameame"


def units(text: str) -> list[str]:
    """Lower-cased words and single punctuation / symbol characters, in order; a word made of one short pattern
    repeated is that pattern, that many times."""
    out = []
    for u in _UNIT.findall(text.lower()):
        loop = _LOOP.fullmatch(u)
        out += [loop.group(1)] * (len(u) // len(loop.group(1))) if loop else [u]
    return out


def seq_rep(tokens: list[str], n: int = FLUENCY_N) -> float:
    """Welleck et al.'s seq-rep-n: 1 - unique n-grams / n-grams; 0 when the sequence has no n-gram."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def fluency(text: str, n: int = FLUENCY_N) -> float:
    """1 - seq-rep-n over the answer's units; 0 for an answer without a word."""
    u = units(text)
    return 1.0 - seq_rep(u, n) if any(x[0].isalnum() or x[0] == "_" for x in u) else 0.0


def split_fluency(rows: list[dict]) -> float | None:
    """Mean fluency over a split's generated answers (a row's "generated" is one answer, or a list of N); None when
    the split was scored without generation."""
    gens = [r["generated"] for r in rows if "generated" in r]
    texts = [g for x in gens for g in (x if isinstance(x, list) else [x])]
    return sum(map(fluency, texts)) / len(texts) if texts else None


for _split in ("forget", "retain"):
    metric(
        f"{_split}_fluency",
        True,
        (_split,),
        f"mean over the {_split} split's generated answers of 1 - seq-rep-2 (bigrams of words and symbols)",
    )(lambda ctx, s=_split: split_fluency(ctx[s]))


def collapse_reasons(metrics: dict) -> list[str]:
    """What in a run's metrics is beyond the collapse thresholds (see the module docstring); [] when nothing."""
    out = []
    for name in ("forget_fluency", "retain_fluency"):
        v = metrics.get(name)
        if v is not None and v < FLUENCY_FLOOR:
            out.append(f"{name} {v:.3f} < {FLUENCY_FLOOR}")
    v = metrics.get("privleak")
    if v is not None and v > PRIVLEAK_CEILING and "recovered_acc" not in metrics:
        out.append(f"privleak {v:.1f} > {PRIVLEAK_CEILING:g}")
    return out
