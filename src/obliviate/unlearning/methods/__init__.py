"""Training-time unlearning methods. One file per method; importing this package registers them all.

A method is a config dataclass (its hyper-parameters, with defaults tuned on the built-in world) that
subclasses `obliviate.engine.method.Method`, plus a pure loss function over per-sequence statistics. The training loop calls
`method.loss(model, batch)` with the batch contract

    batch = {"forget": {...}, "retain": {...}, "forget_idk": {...}}   # only the parts in `method.needs`

where each part holds input_ids / attention_mask / labels [B, T] and, for parts named in
`method.reference`, `ref_logp` [B]: the frozen starting model's summed answer log-prob, computed once
before training so that only one model is held in memory.

To add a method: create `unlearning/methods/my_method.py` with a `@METHODS.register("my_method")` dataclass. If its loss is a
sum over its parts of means over answer tokens or over items, write each term in `part_loss` and set `splits`:
long batches then train in micro-batches (`TrainConfig.max_batch_tokens`; see NPO).
"""

from __future__ import annotations

import importlib
import pkgutil

from obliviate.core.registry import Registry
from obliviate.engine.method import Method

METHODS: Registry[type[Method]] = Registry("method")


def with_oracle(cls: type[Method], oracle: str) -> Method:
    """`cls` with its defaults; a method matched to a retrained oracle's outputs (it has an `oracle` option:
    `oracle_matching`) is given `oracle`, the directory of the oracle that the caller trained (world demo, bench)."""
    return cls(oracle=oracle) if "oracle" in cls.__dataclass_fields__ else cls()


def load_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


load_all()
