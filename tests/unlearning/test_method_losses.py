"""Every registered method's `loss` (and, where it splits, each `part_loss`) against its paper's equation evaluated
by hand on a constructed bigram model.

The model's next-token distribution depends only on the current token: P[a][b] = p(next = b | current = a), written
out below, so every answer-token probability is read off the table. The expected values are computed with Python's
`math` on those numbers, written independently of the methods (no function of `obliviate.unlearning.methods` is called for
them). Hyper-parameters differ from 1 wherever a weight could be dropped unseen.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from obliviate.engine.train import FineTune
from obliviate.unlearning.methods import METHODS

P = [[0.5, 0.25, 0.25], [0.125, 0.5, 0.375], [0.25, 0.25, 0.5]]  # the trained model
Q = [[0.25, 0.5, 0.25], [0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]  # the frozen reference (live-reference methods)
E = [[1.0, 0.0], [0.0, 2.0], [1.0, -1.0]]  # token embeddings: RMU's hidden states
E_REF = [[1.0, 1.0], [0.5, 2.0], [0.0, -1.0]]

# (token ids, prompt length): the tokens after the prompt are the answer. Answers of different lengths, so that a
# token mean and a mean of per-sequence means differ
PARTS = {
    "forget": [([0, 1, 2], 1), ([2, 0, 0, 1, 1], 2)],
    "retain": [([1, 1, 0], 1), ([0, 0], 1)],
    "forget_idk": [([0, 2, 2], 1), ([2, 0, 1, 1], 2)],
    "forget_alt": [([0, 0], 1), ([2, 1, 2], 2)],
}
REF_LOGP = {"forget": [-2.0, -1.5], "forget_idk": [-3.0, -2.5], "forget_alt": [-1.0, -0.5]}


class Bigram(torch.nn.Module):
    """logits[t] = log table[token t]; hidden states (embeddings, 2 x embeddings, 3 x embeddings): two "layers"."""

    def __init__(self, table, emb):
        super().__init__()
        self.logits_table = torch.nn.Parameter(torch.log(torch.tensor(table)))
        self.emb = torch.nn.Parameter(torch.tensor(emb))

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
        h = self.emb[input_ids]
        return SimpleNamespace(
            logits=self.logits_table[input_ids], hidden_states=(h, 2 * h, 3 * h) if output_hidden_states else None
        )


def batch_of(name: str) -> dict:
    """Right-padded with token 0; labels -100 on the prompt and the padding."""
    seqs = PARTS[name]
    T = max(len(s) for s, _ in seqs)
    ids = [s + [0] * (T - len(s)) for s, _ in seqs]
    labels = [[-100] * k + s[k:] + [-100] * (T - len(s)) for s, k in seqs]
    mask = [[1] * len(s) + [0] * (T - len(s)) for s, _ in seqs]
    out = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}
    if name in REF_LOGP:
        out["ref_logp"] = torch.tensor(REF_LOGP[name])
    out["index"] = torch.arange(len(seqs))  # the items' positions in their part (as the training loop gives them)
    return out


# --- by hand -----------------------------------------------------------------------------------------------------


def steps(name: str, skip_first: int = 0) -> list[tuple[int, int]]:
    """(current token, answer token) for each answer token of the part, all sequences pooled."""
    return [(s[t - 1], s[t]) for s, k in PARTS[name] for t in range(k + skip_first, len(s))]


def seq_logp(name: str) -> list[float]:
    return [sum(math.log(P[s[t - 1]][s[t]]) for t in range(k, len(s))) for s, k in PARTS[name]]


def seq_len(name: str) -> list[int]:
    return [len(s) - k for s, k in PARTS[name]]


def nll(name: str) -> float:
    """Token-mean NLL over the part's answer tokens (HF's `outputs.loss`, TOFU's SFT loss)."""
    return -sum(seq_logp(name)) / sum(seq_len(name))


def near(value: float):
    return pytest.approx(value, rel=1e-6, abs=1e-6)  # float32 arithmetic in the methods


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def dpo(preferred: str, beta: float) -> float:
    """DPO (Rafailov et al. 2023, eq. 7) with OpenUnlearning's 2/beta scale."""
    margins = [
        (w - wr) - (lo - lr)
        for w, wr, lo, lr in zip(seq_logp(preferred), REF_LOGP[preferred], seq_logp("forget"), REF_LOGP["forget"])
    ]
    return -(2 / beta) * mean(logsig(beta * m) for m in margins)


def kl_retain_by_hand() -> float:
    """Mean over every real retain position of KL(Q[a] || P[a]) (TOFU's KL minimisation)."""
    return mean(sum(q * math.log(q / p) for q, p in zip(Q[a], P[a])) for s, _ in PARTS["retain"] for a in s)


def rmu_by_hand(c: float, alpha: float, seed: int) -> float:
    """WMDP (Li et al. 2024) eq. 1-3 at layer -2 (2 x embeddings here, the frozen copy 2 x E_REF); u ~ U[0,1)^d."""
    u = torch.rand(2, generator=torch.Generator().manual_seed(seed)).tolist()
    norm = math.hypot(*u)
    control = [c * x / norm for x in u]
    forget = mean(mean((2 * e - ctl) ** 2 for e, ctl in zip(E[a], control)) for s, _ in PARTS["forget"] for a in s)
    retain = mean(mean((2 * e - 2 * e0) ** 2 for e, e0 in zip(E[a], E_REF[a])) for s, _ in PARTS["retain"] for a in s)
    return forget + alpha * retain


def l1_by_hand(gamma: float) -> float:
    values = [abs(math.log(p)) for row in P for p in row] + [abs(x) for row in E for x in row]
    return gamma * sum(values) / len(values)


# Splitting methods: (options, {part: its weighted term}); the loss is the sum of the terms.
SPLIT = {
    # Jang et al. 2023 eq. 1: L = -NLL_forget
    "grad_ascent": ({}, lambda: {"forget": -nll("forget")}),
    # DP2Unlearning (Al Mahmud et al. 2025) stage 2: the SFT loss on the retain data only
    "dp2unlearning": ({}, lambda: {"retain": nll("retain")}),
    # TOFU sec. 4 (GradDiff): L = -gamma NLL_forget + alpha NLL_retain
    "grad_diff": (
        {"gamma": 2.0, "retain_weight": 0.5},
        lambda: {"forget": -2.0 * nll("forget"), "retain": 0.5 * nll("retain")},
    ),
    # NPO (Zhang et al. 2024) eq. 3: -(2/beta) mean logsig(-beta (log pi - log pi_ref)), summed answer log-probs
    "npo": (
        {"beta": 0.3, "gamma": 2.0, "retain_weight": 0.5},
        lambda: {
            "forget": 2.0
            * -(2 / 0.3)
            * mean(logsig(-0.3 * (lp - r)) for lp, r in zip(seq_logp("forget"), REF_LOGP["forget"])),
            "retain": 0.5 * nll("retain"),
        },
    ),
    # SimNPO (Fan et al. 2024) eq. 4, margin beta * delta: -(2/beta) mean logsig(beta (NLL/|y| - delta))
    "simnpo": (
        {"beta": 2.0, "delta": 0.5, "gamma": 0.25, "retain_weight": 3.0},
        lambda: {
            "forget": 0.25
            * -(2 / 2.0)
            * mean(logsig(2.0 * (-lp / n - 0.5)) for lp, n in zip(seq_logp("forget"), seq_len("forget"))),
            "retain": 3.0 * nll("retain"),
        },
    ),
    # WGA (Wang et al. 2025): L_f = -mean_t p_t^beta CE_t, CE_t = -log p_t
    "wga": (
        {"beta": 2.0, "gamma": 3.0, "retain_weight": 0.5},
        lambda: {
            "forget": 3.0 * -mean(P[a][b] ** 2 * -math.log(P[a][b]) for a, b in steps("forget")),
            "retain": 0.5 * nll("retain"),
        },
    ),
    # SatImp (Yang et al. 2025): w_t = p^beta1 (1 - p)^beta2, L_f = -mean_t w_t CE_t
    "satimp": (
        {"beta1": 2.0, "beta2": 3.0, "gamma": 2.0, "retain_weight": 0.1},
        lambda: {
            "forget": 2.0 * -mean(P[a][b] ** 2 * (1 - P[a][b]) ** 3 * -math.log(P[a][b]) for a, b in steps("forget")),
            "retain": 0.1 * nll("retain"),
        },
    ),
    # IHL (Cha et al. 2025): L_f = mean_t 1 + p(y_t) - max_{v != y_t} p(v)
    "ihl": (
        {"retain_weight": 0.5},
        lambda: {
            "forget": mean(1 + P[a][b] - max(p for v, p in enumerate(P[a]) if v != b) for a, b in steps("forget")),
            "retain": 0.5 * nll("retain"),
        },
    ),
    # TOFU sec. 4 (IDK): L = NLL(idk | x_forget) + alpha NLL_retain
    "idk_nll": ({"retain_weight": 0.5}, lambda: {"forget_idk": nll("forget_idk"), "retain": 0.5 * nll("retain")}),
    # Ilharco et al. 2023 sec. 3: the fine-tuning phase descends the forget NLL
    "task_vector": ({}, lambda: {"forget": nll("forget")}),
    # Georgiev et al. 2024 (Oracle / Datamodel Matching): squared error of the answer-token margins
    # log p - log(1 - p) against per-item targets (`TARGET_MARGINS`, which `prepare` computes in training)
    "oracle_matching": (
        {"forget_weight": 2.0, "retain_weight": 0.5},
        lambda: {"forget": 2.0 * margin_sq_err("forget"), "retain": 0.5 * margin_sq_err("retain")},
    ),
    "dmm": (
        {"forget_weight": 2.0, "retain_weight": 0.5},
        lambda: {"forget": 2.0 * margin_sq_err("forget"), "retain": 0.5 * margin_sq_err("retain")},
    ),
}
# per item, one target margin per answer token (Oracle / Datamodel Matching); batches carry `index`
TARGET_MARGINS = {"forget": [[0.5, -1.0], [0.0, 1.0, 2.0]], "retain": [[1.0, 0.0], [-0.5]]}


def margin_sq_err(name: str) -> float:
    targets = [t for item in TARGET_MARGINS[name] for t in item]
    return mean((math.log(P[a][b] / (1 - P[a][b])) - t) ** 2 for (a, b), t in zip(steps(name), targets))


# Methods whose loss does not split: (options, total, needs a frozen reference model).
WHOLE = {
    "idk_dpo": (
        {"beta": 0.2, "gamma": 2.0, "retain_weight": 0.5},
        lambda: 2.0 * dpo("forget_idk", 0.2) + 0.5 * nll("retain"),
        False,
    ),
    # AltPO (Mekala et al. 2025): the same DPO loss with the alternate answers preferred
    "altpo": (
        {"beta": 0.2, "gamma": 2.0, "retain_weight": 0.5},
        lambda: 2.0 * dpo("forget_alt", 0.2) + 0.5 * nll("retain"),
        False,
    ),
    # CE-U (Yang 2025): q = softmax with the true token at -inf, L = mean_t CE(p, q); the first answer token skipped
    "ce_u": (
        {"retain_weight": 0.5},
        lambda: (
            mean(
                -sum(P[a][v] / (1 - P[a][b]) * math.log(P[a][v]) for v in range(3) if v != b)
                for a, b in steps("forget", skip_first=1)
            )
            + 0.5 * nll("retain")
        ),
        False,
    ),
    # UNDIAL (Dong et al. 2025): q = softmax(z_ref - beta onehot(y)), L_f = mean_t CE(p, q)
    "undial": (
        {"beta": 2.0, "gamma": 3.0, "retain_weight": 0.5},
        lambda: (
            3.0
            * mean(
                -sum(
                    Q[a][v]
                    * math.exp(-2.0 * (v == b))
                    / sum(Q[a][j] * math.exp(-2.0 * (j == b)) for j in range(3))
                    * math.log(P[a][v])
                    for v in range(3)
                )
                for a, b in steps("forget")
            )
            + 0.5 * nll("retain")
        ),
        True,
    ),
    # FLAT (Wang et al. 2025) eq. 4, total variation: -tanh(P_e)/2 + tanh(P_f)/2, P = mean answer-token probability
    "flat": (
        {"divergence": "tv"},
        lambda: (
            -0.5 * math.tanh(mean(P[a][b] for a, b in steps("forget_idk")))
            + 0.5 * math.tanh(mean(P[a][b] for a, b in steps("forget")))
        ),
        False,
    ),
    "rmu": ({"steering_coeff": 3.0, "retain_weight": 2.0, "seed": 1}, lambda: rmu_by_hand(3.0, 2.0, 1), True),
    # Jia et al. 2023: GradDiff (gamma 1) plus gamma_t mean |theta|, gamma_0 at step 0
    "l1_sparse": (
        {"gamma": 0.1, "retain_weight": 0.5},
        lambda: -nll("forget") + 0.5 * nll("retain") + l1_by_hand(0.1),
        False,
    ),
    "prune_unlearn": ({"retain_weight": 0.5}, lambda: -nll("forget") + 0.5 * nll("retain"), False),
}


def test_every_registered_method_is_computed_here():
    assert set(SPLIT) | set(WHOLE) == set(METHODS.names())
    assert {n for n in METHODS.names() if METHODS.get(n)().splits} == set(SPLIT)


def _run(method, ref=False):
    model = Bigram(P, E)
    ref_model = Bigram(Q, E_REF) if ref else None
    batch = {p: batch_of(p) for p in method.needs}
    with torch.no_grad():
        return model, batch, ref_model, method.loss(model, batch, ref_model)


@pytest.mark.parametrize("name", sorted(SPLIT) + ["finetune"])
def test_a_loss_that_splits_is_its_equation_part_by_part(name):
    """Each part's term by hand, and the loss the sum of those hand values (`Method.splits`: micro-batching relies
    on it, so a method that overrides `loss` and keeps `splits` fails here unless its loss is that sum)."""
    if name == "finetune":
        method, want = FineTune(), {"retain": nll("retain")}
    else:
        options, terms = SPLIT[name]
        method, want = METHODS.get(name)(**options), terms()
        if name in ("oracle_matching", "dmm"):
            method._targets = {k: [torch.tensor(t) for t in v] for k, v in TARGET_MARGINS.items()}
    assert method.splits and set(want) == set(method.needs)
    model, batch, _, (whole, logs) = _run(method)
    with torch.no_grad():
        for part, value in want.items():
            assert float(method.part_loss(model, part, batch[part])[0]) == near(value), part
    assert float(whole) == near(sum(want.values()))
    assert logs and all(method.part_mean(p) in ("token", "item") for p in method.needs)


@pytest.mark.parametrize("name", sorted(WHOLE))
def test_a_loss_is_its_equation(name):
    options, total, ref = WHOLE[name]
    method = METHODS.get(name)(**options)
    assert not method.splits
    *_, (loss, logs) = _run(method, ref)
    assert float(loss) == near(total()) and logs


def test_grad_diff_kl_retain_is_its_equation():
    """TOFU's KL variant: -gamma NLL_forget + alpha mean over the real retain positions of KL(p_ref || p_theta)."""
    method = METHODS.get("grad_diff")(gamma=2.0, retain_weight=0.5, retain_loss="kl")
    assert not method.splits
    *_, (loss, logs) = _run(method, ref=True)
    assert logs["retain_kl"] == near(kl_retain_by_hand())
    assert float(loss) == near(-2.0 * nll("forget") + 0.5 * kl_retain_by_hand())
