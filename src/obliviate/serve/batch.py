"""The serving engine's running batch: the decode loop of `obliviate.engine.generation.decode`, one step at a time,
with rows that join and leave between steps (continuous batching).

One padded KV cache (transformers' `DynamicCache`: keys and values [B, heads, T, d] per layer) holds every live
row, left-padded so that position -1 is each row's next token, as in `decode`. A group of new requests is
prefilled on a cache of its own, where its guards' prefill hooks run as in `decode` (`on_request`,
`edit_embeddings`, `taps` + `on_prefill` with the group's own Session), and is then merged in: the shorter of the
two caches is left-padded with masked zeros to the other's length and the two are concatenated along the batch.
A finished row leaves at once (its cache rows are dropped) and the columns that only padding fills are cut from
the left. Positions come from the attention mask, as in `decode`, so padding never shows to a row. Only a cache
whose layers are all plain `DynamicLayer`s can be merged like this (`mergeable`); a model with sliding-window or
recurrent layers is served with static batching.

Guards see what `decode` shows them, row by row: `process_logits` and `on_step` are called once per group of rows
at the same step, so `step` and `ids` [b, step] are those rows' own; `on_step` gets a view of the live Session
restricted to that group (its `probe` runs on the whole batch, which it crops back exactly, and returns the
group's rows). When every row is at the same step (static batching, or requests that arrived together) the
guards get the whole batch, as from `decode`.

Each row draws from its own `torch.Generator` (`Request.sampling`), so a seeded request's reply does not depend
on what else is in the batch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable

import torch

from obliviate.engine.generation import Row, Session, left_pad, prefill
from obliviate.engine.hooks import overrides, routing_hooks
from obliviate.engine.sampling import pick


def mergeable(model) -> bool:
    """Whether rows can join a running batch: the model's cache layers are all plain (full-attention) DynamicLayers."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


def _hooked(guards, name):
    return [g for g in guards if overrides(g, name)]


class View:
    """The live Session restricted to some of its rows, for `on_step` at one step count: `rows`, `active`,
    `prompt_ids`, `probe` and `halt`, as a Session has them."""

    def __init__(self, live: Session, idx: list[int], pad: int):
        self.live, self.idx = live, idx
        self.model, self.tok, self.cache = live.model, live.tok, live.cache
        self.rows = [live.rows[i] for i in idx]
        self.active = live.active[idx]
        self.mask = live.mask[idx]
        self.prompt_ids = left_pad([live.prompts[i] for i in idx], pad, live.mask.device)[0]

    def probe(self, extra_ids: list[int], lookahead: int = 0, hidden: bool = False) -> dict:
        res = self.live.probe(extra_ids, lookahead=lookahead, hidden=hidden)
        at = torch.tensor(self.idx, device=res["logits"].device)
        return {
            "logits": res["logits"][at],
            "hidden": tuple(h[at] for h in res["hidden"]) if res["hidden"] is not None else None,
            "lookahead": res["lookahead"][at.to(res["lookahead"].device)],
        }

    def halt(self, r: int, by: str, refusal: str) -> None:
        self.active[r] = False
        self.live.halt(self.idx[r], by, refusal)


@dataclass(eq=False)
class Slot:
    """One live row: its request, the Row guards see, its tokens so far and its own generator (sampling)."""

    req: Any
    row: Row
    gen: list
    generator: Any = None


Entry = tuple  # (token id, logprob, [(alternative id, logprob), ...]): one generated token's log-probabilities


class Batch:
    """The live rows of the engine. `admit` prefills requests into it, `step` decodes one token for every row.

    `on_token(req, row, token, entry) -> bool` hears every token (entry: its log-probabilities when the request
    asks for them, else None) and says whether the row's reply is complete; `on_halt(req, row)` hears a row a
    guard halted; `gone(req)` a row that left for any other reason (cancelled, already answered)."""

    _row_ids = itertools.count()

    def __init__(
        self,
        model,
        tok,
        guards,
        on_token: Callable[[Any, Row, int, Entry | None], bool],
        on_halt: Callable[[Any, Row], None],
        gone: Callable[[Any], None],
    ):
        self.model, self.tok, self.guards = model, tok, list(guards)
        self.on_token, self.on_halt, self.gone = on_token, on_halt, gone
        self.device = next(model.parameters()).device
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.slots: list[Slot] = []
        self.live: Session | None = None
        self.logits: torch.Tensor | None = None  # [B, V] every live row's next-token logits
        self.taps = sorted({t for g in _hooked(self.guards, "taps") for t in g.taps()}, key=str)
        self.stepped = [g for g in _hooked(self.guards, "on_step") if getattr(g, "every", 0) > 0]
        self.editing = _hooked(self.guards, "process_logits")
        model.eval()

    def __len__(self) -> int:
        return len(self.slots)

    def requests(self) -> list:
        return [s.req for s in self.slots]

    # --- joining ---
    @torch.no_grad()
    def admit(self, reqs: list) -> None:
        """Prefill `reqs` together (left-padded among themselves) and merge them into the running batch."""
        model = self.model
        rows = [Row(next(self._row_ids), r.text) for r in reqs]
        prompts = [r.prompt for r in reqs]
        ids, mask = left_pad(prompts, self.pad, self.device)
        with routing_hooks(model, self.guards):
            session, logits = prefill(model, self.tok, self.guards, ids, mask, rows, self.taps)
        session.prompts = prompts
        slots = [
            Slot(r, row, [], r.sampling.generator(self.device) if r.sampling is not None else None)
            for r, row in zip(reqs, rows)
        ]
        if self.live is None:
            self.live, self.logits, self.slots = session, logits, slots
        else:
            self._merge(session, logits, slots)
        self.sweep()

    def _merge(self, new: Session, logits: torch.Tensor, slots: list[Slot]) -> None:
        live = self.live
        width = max(live.mask.shape[1], new.mask.shape[1])

        def lpad(t: torch.Tensor, dim_from_end: int) -> torch.Tensor:
            short = width - t.shape[-dim_from_end]
            if not short:
                return t
            return torch.nn.functional.pad(t, (0, 0) * (dim_from_end - 1) + (short, 0))

        for a, b in zip(live.cache.layers, new.cache.layers):
            if not getattr(a, "is_initialized", False):
                continue
            a.keys = torch.cat([lpad(a.keys, 2), lpad(b.keys, 2)])
            a.values = torch.cat([lpad(a.values, 2), lpad(b.values, 2)])
        live.mask = torch.cat([lpad(live.mask, 1), lpad(new.mask, 1)])
        live.rows = live.rows + new.rows
        live.active = torch.cat([live.active, new.active])
        live.prompts = live.prompts + new.prompts
        live.prompt_ids = left_pad(live.prompts, self.pad, self.device)[0]
        self.logits = torch.cat([self.logits, logits])
        self.slots = self.slots + slots

    # --- leaving ---
    def _keep(self, keep: list[int]) -> None:
        """Keep only the rows `keep` (indices into slots), and cut the columns only padding fills."""
        if len(keep) == len(self.slots):
            return
        if not keep:
            self.slots, self.live, self.logits = [], None, None
            return
        live = self.live
        at = torch.tensor(keep, device=self.device)
        for layer in live.cache.layers:
            if getattr(layer, "is_initialized", False):
                layer.batch_select_indices(at)
        live.mask = live.mask[at]
        lead = int((live.mask.sum(0) == 0).long().cumprod(0).sum())  # leading columns with no real token
        if lead:
            for layer in live.cache.layers:
                if getattr(layer, "is_initialized", False):
                    layer.keys, layer.values = layer.keys[..., lead:, :], layer.values[..., lead:, :]
            live.mask = live.mask[:, lead:]
        live.rows = [live.rows[i] for i in keep]
        live.active = live.active[keep]
        live.prompts = [live.prompts[i] for i in keep]
        live.prompt_ids = left_pad(live.prompts, self.pad, self.device)[0]
        self.logits = self.logits[at] if self.logits is not None else None
        self.slots = [self.slots[i] for i in keep]

    def sweep(self) -> None:
        """Rows a guard halted get their refusal; rows cancelled or answered leave."""
        keep = []
        for i, s in enumerate(self.slots):
            if s.req.cancelled or s.req.finished:
                self.gone(s.req)
            elif s.row.halted_by is not None:
                self.on_halt(s.req, s.row)
            else:
                keep.append(i)
        self._keep(keep)

    # --- one token ---
    def _groups(self, idx: list[int] | None = None) -> dict[int, list[int]]:
        """Row indices by their step (tokens generated so far)."""
        out: dict[int, list[int]] = {}
        for i in range(len(self.slots)) if idx is None else idx:
            out.setdefault(len(self.slots[i].gen), []).append(i)
        return out

    def _ids(self, idx: list[int]) -> torch.Tensor:
        return torch.tensor([self.slots[i].gen for i in idx], dtype=torch.long, device=self.device).reshape(
            len(idx), -1
        )

    @torch.no_grad()
    def step(self) -> None:
        """Every live row gets its next token; rows whose reply is complete leave; the rest run one forward."""
        self.sweep()
        if not self.slots:
            return
        with routing_hooks(self.model, self.guards):
            self._step()
        self.sweep()

    def _step(self) -> None:
        logits, groups = self.logits, self._groups()
        rows = [s.row for s in self.slots]
        if self.editing and len(groups) == 1:
            (step,) = groups
            ids = self._ids(list(range(len(self.slots))))
            for g in self.editing:
                logits = g.process_logits(step, ids, logits, rows)
        elif self.editing:
            logits = logits.clone()
            for step, idx in groups.items():
                at = torch.tensor(idx, device=self.device)
                sub, ids = logits[at], self._ids(idx)
                for g in self.editing:
                    sub = g.process_logits(step, ids, sub, [rows[i] for i in idx])
                logits[at] = sub
        nxt = logits.argmax(-1)
        for i, s in enumerate(self.slots):
            if s.req.sampling is not None:
                nxt[i] = pick(logits[i : i + 1], s.req.sampling, s.generator)[0]
        tokens = nxt.tolist()
        entries = self._logprobs(logits, tokens)
        keep = []
        for i, s in enumerate(self.slots):
            s.gen.append(tokens[i])
            if not self.on_token(s.req, s.row, tokens[i], entries.get(i)):
                keep.append(i)
        self._keep(keep)
        if not self.slots:
            return
        out = self.live.forward(torch.tensor([[s.gen[-1]] for s in self.slots], device=self.device))
        self.logits = out.logits[:, -1].float()
        for g in self.stepped:
            for step, idx in self._groups().items():
                if step % g.every == 0:
                    session = self.live if len(idx) == len(self.slots) else View(self.live, idx, self.pad)
                    g.on_step(step, self._ids(idx), session)

    def _logprobs(self, logits: torch.Tensor, tokens: list[int]) -> dict[int, Entry]:
        """Row -> (token, its log-probability, the `Request.logprobs` most likely (token, log-probability)) for
        the rows that ask: the distribution the guards left, before temperature and top_p."""
        want = [i for i, s in enumerate(self.slots) if s.req.logprobs is not None]
        if not want:
            return {}
        lp = torch.log_softmax(logits[torch.tensor(want, device=self.device)].float(), -1)
        k = max(self.slots[i].req.logprobs for i in want)
        top = lp.topk(k, -1) if k else None
        out = {}
        for j, i in enumerate(want):
            n = self.slots[i].req.logprobs
            alts = list(zip(top.indices[j, :n].tolist(), top.values[j, :n].tolist())) if n else []
            out[i] = (tokens[i], float(lp[j, tokens[i]]), alts)
        return out
