"""`--option KEY=VALUE` strings -> a config dataclass, cast by each field's default type (shared by methods,
attacks and guards)."""

from __future__ import annotations

from dataclasses import MISSING, fields

from obliviate.core.errors import UsageError

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def cast_options(cls, options: dict, what: str) -> dict:
    """{key: string or value} -> keyword arguments for `cls`; an unknown key or a value of the wrong type is a
    one-line UsageError naming `what` (e.g. "attack prefill")."""
    known = {f.name: f for f in fields(cls) if not f.name.startswith("_")}
    kwargs = {}
    for key, value in options.items():
        if key not in known:
            raise UsageError(f"{what} has no option {key!r} (options: {', '.join(known) or 'none'})")
        f = known[key]
        default = f.default if f.default is not MISSING else getattr(cls, key, None)
        kind = type(default) if default is not None else str
        if kind is bool and isinstance(value, str):  # bool("false") is True
            if value.strip().lower() not in _TRUE + _FALSE:
                raise UsageError(f"{what} option {key}={value!r}: expected true or false")
            kwargs[key] = value.strip().lower() in _TRUE
            continue
        try:
            kwargs[key] = kind(value)
        except (TypeError, ValueError):
            raise UsageError(f"{what} option {key}={value!r}: expected {kind.__name__}") from None
    return kwargs
