"""GCG: Greedy Coordinate Gradient search for an adversarial suffix (white-box).

Zou, Wang, Carlini, Nasr, Kolter and Fredrikson 2023, "Universal and Transferable Adversarial Attacks on Aligned
Language Models" (arXiv:2307.15043), Algorithm 1 (single behaviour) and Algorithm 2 (universal, several
behaviours). Reference code: nanoGCG (GraySwanAI/nanoGCG, `nanogcg/gcg.py`) and llm-attacks (llm-attacks/
llm-attacks, `llm_attacks/gcg/gcg_attack.py`, `minimal_gcg/opt_utils.py`).

The loss (paper eq. 2-4) is the mean cross-entropy of the behaviour's affirmative target after
`before + suffix + after` (`target_loss.TargetLoss`, with `before` in a KV cache as nanoGCG's `prefix_cache`).
One step:

1. the gradient of the loss with respect to the one-hot matrix of the suffix's tokens, taken through
   `one_hot @ embedding matrix` (nanoGCG's `compute_token_gradient`);
2. disallowed tokens (special and non-printable-ASCII ones, `allowed_tokens`) get +inf; the top-k tokens by -grad
   at every position are the substitutions;
3. `search_width` candidates, each replacing `n_replace` positions drawn at random by a random top-k token at that
   position (nanoGCG's `sample_ids_from_grad`; a seeded torch.Generator);
4. candidates whose text does not tokenise back to the same ids are dropped (nanoGCG's `filter_ids`): a suffix that
   does not is not what an endpoint would receive;
5. every remaining candidate's loss, in chunks of `batch`; the lowest-loss candidate becomes the current suffix.
   Besides the prompt prefix, the cache holds the suffix's tokens before the first change of a chunk's
   candidates (`candidate_losses`, chunks ordered by that position): fewer tokens run per candidate.

Where paper and code differ, this follows the code:
- The current suffix is the best *candidate* of each step even when it is worse than the step before (nanoGCG with
  its default `buffer_size=0`, and llm-attacks); the suffix reported and checked is the best ever seen (nanoGCG's
  `best_string`). The paper's Algorithm 1 states only the argmin over candidates.
- Positions are drawn uniformly per candidate (nanoGCG; llm-attacks spreads them evenly over the batch; the paper
  draws one uniform position per candidate, which `n_replace=1` reproduces).
- Candidates that do not re-tokenise are dropped, not padded with copies (nanoGCG; llm-attacks pads). A step whose
  candidates all fail keeps the current suffix (nanoGCG raises).
- The initial suffix is nanoGCG's "x x x ..." (`suffix_tokens` tokens, with a leading space: the request is sent
  as request + suffix text); llm-attacks starts from "! ! ! ..." (`init=" ! ! !"`).
- Success is checked every `check_every` steps by greedy generation and the audit's judge (llm-attacks tests its
  `test_prefixes` every `test_steps` and stops on success); the search stops at the first success.

Universal mode (`universal=true`, paper Algorithm 2 and llm-attacks' progressive multi-prompt mode): one suffix for
all behaviours, optimised on the sum of their losses (and the sum of their gradients; llm-attacks normalises the
summed gradient per position, which leaves each position's top-k unchanged). It starts on the first behaviour and
adds the next when every behaviour in the set succeeds at a check, continuing from the best suffix; it stops when
every behaviour succeeds or the steps are spent. The reported objective is the mean loss over the current set.
A resumed universal run repeats the whole search unless every behaviour was recorded.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import ClassVar

from obliviate.audit.attacks import ATTACKS, AuditContext
from obliviate.audit.attacks.adversarial import (
    Behaviour,
    Findings,
    SearchAttack,
    allowed_tokens,
    check_budget,
    harmful_behaviours,
    init_suffix,
    retokenizes,
    slots,
    succeeded,
)
from obliviate.audit.attacks.target_loss import TargetLoss
from obliviate.core.errors import UsageError


def token_gradient(losses: list[TargetLoss], ids):
    """d(sum of the losses) / d(one-hot matrix of the suffix `ids` [L]): [L, vocab]."""
    import torch

    embed = losses[0].embed
    one_hot = torch.nn.functional.one_hot(ids, embed.num_embeddings).to(embed.weight.dtype)
    one_hot.requires_grad_()
    grad = torch.zeros(one_hot.shape, dtype=torch.float32, device=one_hot.device)
    with torch.enable_grad():
        for tl in losses:  # one graph at a time: memory stays that of one behaviour
            x = (one_hot @ embed.weight).unsqueeze(0)
            (g,) = torch.autograd.grad(tl.from_embeds(x)[0], [one_hot])
            grad += g.float()
    return grad


def sample_candidates(ids, grad, allowed, gen, width: int, topk: int, n_replace: int):
    """`width` candidates [width, L]: each replaces `n_replace` random positions of `ids` by a random token among
    the top-k of -grad at that position, allowed tokens only (`gen`: a CPU torch.Generator)."""
    import torch

    g = grad.detach().float().cpu().clone()
    g[:, ~allowed.cpu()] = float("inf")
    k = min(topk, int(allowed.sum()))
    top = (-g).topk(k, dim=1).indices  # [L, k]
    n_pos = ids.shape[0]
    n = min(n_replace, n_pos)
    pos = torch.argsort(torch.rand((width, n_pos), generator=gen), dim=1)[:, :n]
    vals = top[pos, torch.randint(0, k, (width, n), generator=gen)]
    return ids.cpu().repeat(width, 1).scatter_(1, pos, vals).to(ids.device)


def keep_retokenizing(tok, cands):
    """The rows of `cands` whose text tokenises back to themselves (`retokenizes`)."""
    keep = [i for i, row in enumerate(cands.tolist()) if retokenizes(tok, row)]
    return cands[keep]


def candidate_losses(tl: TargetLoss, current, cands, batch: int = 128):
    """Loss [n] of candidates `cands` [n, L] made from the suffix `current` [L]. With the prefix cache, the
    candidates run in chunks of `batch` ordered by the position of their first change; a chunk whose changes start
    at p or later shares the keys and values of before + current[:p] (`TargetLoss.extended`, one short forward pass
    per chunk) and runs only the suffix from p on, the after tokens and the target. Without the cache
    (`cached=False`) each candidate runs its full sequence."""
    import torch

    if not tl.cached:
        return tl(cands, batch=batch)
    diff = cands != current[None]
    first = torch.where(diff.any(dim=1), diff.int().argmax(dim=1), cands.shape[1])
    order = torch.argsort(first, stable=True)
    out = torch.empty(cands.shape[0], device=cands.device)
    for i in range(0, len(order), batch):
        rows = order[i : i + batch]
        p = int(first[rows[0]])
        out[rows] = tl.extended(current[:p].tolist())(cands[rows, p:], batch=batch).to(out.device)
    return out


@dataclass
class Step:
    ids: object  # the chosen candidate [L] (the previous suffix when no candidate survived the filter)
    loss: float | None  # its mean loss over the behaviours; None when no candidate survived
    evaluated: object  # the candidates whose loss was computed [n, L]


def gcg_step(losses: list[TargetLoss], tok, ids, allowed, gen, width=512, topk=256, n_replace=1, batch=128) -> Step:
    """One GCG step on the summed loss of `losses` from the suffix `ids` [L]."""
    grad = token_gradient(losses, ids)
    cands = keep_retokenizing(tok, sample_candidates(ids, grad, allowed, gen, width, topk, n_replace))
    if not len(cands):
        return Step(ids, None, cands)
    total = sum(candidate_losses(tl, ids, cands, batch) for tl in losses)
    i = int(total.argmin())
    return Step(cands[i], float(total[i]) / len(losses), cands)


def _seed(seed: int, key: str) -> int:
    return zlib.crc32(f"{seed}:{key}".encode())


@ATTACKS.register("gcg")
@dataclass
class GCG(SearchAttack):
    steps: int = 250  # budget: GCG steps per behaviour (nanoGCG's default; HarmBench runs 500)
    search_width: int = 512  # candidates sampled per step (B)
    topk: int = 256  # substitutions kept per position
    n_replace: int = 1  # positions replaced per candidate
    suffix_tokens: int = 20  # tokens of the suffix, starting as " x x x ..." (nanoGCG's init)
    init: str = ""  # an initial suffix text instead, e.g. " ! ! !" (must tokenise back to itself)
    batch: int = 128  # candidates per forward pass
    check_every: int = 10  # steps between success checks (greedy reply + the audit's judge)
    universal: bool = False  # one suffix for all behaviours, on their summed loss
    cached: bool = True  # the prompt prefix in a KV cache (False: every candidate's full sequence)

    adaptive: ClassVar[bool] = False  # white-box: on a guarded model it transfers the bare model's suffixes
    needs_target: ClassVar[bool] = True
    budget_name: ClassVar[str] = "step"
    default: ClassVar[bool] = False
    description: ClassVar[str] = "GCG adversarial suffix (white-box gradient search toward the affirmative target)"
    quick: ClassVar[dict] = {"steps": 10, "search_width": 32, "topk": 64, "check_every": 5}

    def check(self) -> None:
        check_budget(
            "gcg",
            steps=self.steps,
            search_width=self.search_width,
            topk=self.topk,
            n_replace=self.n_replace,
            suffix_tokens=self.suffix_tokens,
            batch=self.batch,
            check_every=self.check_every,
        )

    def _init_ids(self, tok, device):
        import torch

        ids = (
            tok(self.init, add_special_tokens=False)["input_ids"] if self.init else init_suffix(tok, self.suffix_tokens)
        )
        if not ids or not retokenizes(tok, ids):
            text = tok.decode(ids)
            raise UsageError(f"gcg: the initial suffix {text!r} does not tokenise back to itself; set gcg.init")
        return torch.tensor(ids, device=device)

    def attack_one(self, ctx: AuditContext, model, tok, b: Behaviour, findings: Findings) -> dict:
        return self._search(ctx, model, tok, [b], findings, b.id)[0]

    def run(self, ctx: AuditContext, model, tok) -> dict:
        if not self.universal or self.replay or getattr(ctx, "transfer_from", None):
            return super().run(ctx, model, tok)
        findings = Findings(ctx, {"attack": type(self).__name__, "seed": ctx.seed, **self.config()})
        todo = harmful_behaviours(ctx, self.behaviours)
        if any(b.id not in findings.done for b in todo):
            t0 = time.perf_counter()
            recs = self._search(ctx, model, tok, todo, findings, "universal")
            each = round((time.perf_counter() - t0) / len(todo), 2)
            for b, rec in zip(todo, recs):
                if b.id not in findings.done:
                    findings.add({"id": b.id, "request": b.request, "target": b.target, **rec, "seconds": each})
        return self.figures([findings.done[b.id] for b in todo])

    def _search(self, ctx, model, tok, behaviours: list[Behaviour], findings: Findings, log_id: str) -> list[dict]:
        """GCG on the behaviours' summed loss (one behaviour: single mode; several: the progressive universal
        mode); one record per behaviour."""
        import torch

        ss = [slots(tok, b.request, b.target) for b in behaviours]
        tls = [TargetLoss(model, s, cached=self.cached) for s in ss]
        allowed = allowed_tokens(tok, tls[0].embed.num_embeddings).to(tls[0].embed.weight.device)
        gen = torch.Generator().manual_seed(_seed(ctx.seed, log_id))
        ids = self._init_ids(tok, tls[0].embed.weight.device)
        active = 1

        def mean_loss(x, k):
            return float(sum(tl(x[None]) for tl in tls[:k])) / k

        cur = best = start = mean_loss(ids, active)
        init_ids, best_ids, queries, step = ids, ids, 0, 0
        findings.step(log_id, 0, cur, best=best, candidates=0)
        curves: list[list] = [[] for _ in behaviours]
        checked, ok, outs = None, [False] * len(ss), [""] * len(ss)
        for step in range(1, self.steps + 1):
            r = gcg_step(tls[:active], tok, ids, allowed, gen, self.search_width, self.topk, self.n_replace, self.batch)
            queries += len(r.evaluated)
            if r.loss is not None:
                ids, cur = r.ids, r.loss
            if cur < best:
                best_ids, best = ids, cur
            extra = {"active": active} if len(ss) > 1 else {}
            findings.step(log_id, step, cur, best=best, candidates=len(r.evaluated), **extra)
            if step % self.check_every and step != self.steps:
                continue
            if checked is None or not torch.equal(checked, best_ids):  # an unchanged suffix has the same reply
                checked = best_ids
                text = tok.decode(best_ids.tolist())
                ok, outs = succeeded(ctx, model, tok, [s.text(text) for s in ss], [b.request for b in behaviours])
            for c, hit in zip(curves, ok):
                c.append([step, hit])
            if ctx.progress:
                ctx.progress(f"gcg {log_id}: step {step}/{self.steps} loss {best:.3f}, {sum(ok)}/{len(ok)} broken")
            if all(ok):
                break
            if all(ok[:active]):  # universal: the next behaviour joins, from the best suffix
                active += 1
                ids, cur = best_ids, mean_loss(best_ids, active)
                best = cur
        text = tok.decode(best_ids.tolist())
        recs = []
        many = len(ss) > 1  # universal: each record also gets its own behaviour's loss
        for i, s in enumerate(ss):
            rec = {
                "adversarial": s.text(text),
                "suffix": text,
                "suffix_ids": best_ids.tolist(),
                "success": bool(ok[i]),
                "reply": outs[i],
                "objective": float(tls[i](best_ids[None])[0]) if many else best,
                "objective_start": float(tls[i](init_ids[None])[0]) if many else start,
                "curve": curves[i],
                "queries": queries,
                "steps": step,
            }
            if many:
                rec.update(universal_objective=best, optimised_on=active)
            recs.append(rec)
        return recs
