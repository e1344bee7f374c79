"""`obliviate serve MODEL`: an OpenAI-compatible server with inference-time guards (see obliviate.serve).

fastapi, uvicorn and the model are imported inside the command, so `--help` stays fast.
"""

import os
import re
from pathlib import Path
from typing import List, Optional

import typer

from obliviate.cli.common import set_threads
from obliviate.core.errors import UsageError


def serve(
    model: str = typer.Argument(..., help="HF chat model directory (or hub id when online)"),
    guard: List[Path] = typer.Option([], help="a fitted guard directory (repeatable; applied in order)"),
    host: str = typer.Option(
        "127.0.0.1",
        help="address to bind (loopback by default; another address needs an API key or --insecure-no-auth)",
    ),
    port: int = typer.Option(8000),
    api_key: Optional[str] = typer.Option(
        None, envvar="OBLIVIATE_API_KEY", help="require `Authorization: Bearer KEY` on /v1/* (an empty key is an error)"
    ),
    insecure_no_auth: bool = typer.Option(
        False, "--insecure-no-auth", help="allow a non-loopback --host without an API key"
    ),
    allowed_host: List[str] = typer.Option(
        [],
        help="a Host header name to answer besides localhost, "
        "127.0.0.1 and [::1] (repeatable, any port; '*': any name)",
    ),
    max_body: str = typer.Option(
        "2MB", help="largest request body (bytes, or with kB/MB/KiB/MiB); larger gets 413 before it is read"
    ),
    read_timeout: float = typer.Option(
        30.0,
        help="seconds a client has to send a request's headers, and "
        "then its whole body (else the connection closes, with 408 for a body)",
    ),
    max_connections: int = typer.Option(256, help="open connections at most; more get 503"),
    model_name: Optional[str] = typer.Option(
        None, help="the name clients send as `model` (default: the model directory's name)"
    ),
    max_batch: int = typer.Option(16, help="replies decoded together at most (1: no batching)"),
    max_queue: int = typer.Option(64, help="requests queued or decoding at most; more get 429"),
    batch_window_ms: float = typer.Option(10.0, help="how long the first request of a batch waits for more"),
    batching: str = typer.Option(
        "continuous",
        help="continuous: a request joins the running batch at its next step; static: it waits for the batch to end",
    ),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads"),
):
    """Serve MODEL on /v1/chat/completions and /v1/completions (greedy unless a request sets a temperature; streamed
    or not), /v1/models and /health, with the --guard directories applied to every reply (a halted reply has
    finish_reason "content_filter")."""
    if batching not in ("continuous", "static"):
        raise UsageError(f"--batching must be continuous or static, got {batching!r}")
    if max_batch < 1 or max_queue < 1 or batch_window_ms < 0:
        raise UsageError("--max-batch and --max-queue must be >= 1 and --batch-window-ms >= 0")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {port}")
    if not read_timeout > 0 or max_connections < 1:
        raise UsageError("--read-timeout must be > 0 and --max-connections >= 1")
    body_limit = parse_size(max_body)
    for h in allowed_host:
        if not re.fullmatch(r"[\w.\-:\[\]]+|\*", h.strip()):
            raise UsageError(f"--allowed-host must be a host name or address (any port), or '*', got {h!r}")
    # click reads an empty OBLIVIATE_API_KEY as unset, which would turn authentication off without a word
    empty_env = api_key is None and os.environ.get("OBLIVIATE_API_KEY") == ""
    if empty_env or (api_key is not None and not api_key.strip()):
        raise UsageError(
            "the API key (--api-key / OBLIVIATE_API_KEY) is empty: set a key, or unset it to serve "
            "without one on loopback"
        )
    from obliviate.serve import Limits, bind, is_loopback

    if not api_key and not is_loopback(host) and not insecure_no_auth:
        raise UsageError(
            f"--host {host} is not loopback: set an API key (OBLIVIATE_API_KEY or --api-key), or pass "
            "--insecure-no-auth to serve it to the network without one"
        )
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError("obliviate serve needs fastapi and uvicorn: pip install 'obliviate[serve]'") from None
    from obliviate.guards.base import check_guard_dirs, load_guard
    from obliviate.models.load import check_model_dir, load_model
    from obliviate.serve import Engine, create_app, uvicorn_server

    check_guard_dirs(guard)  # fail fast, before the model loads
    check_model_dir(model)
    try:
        sock = bind(host, port)  # the port is known to be free before the model loads; uvicorn serves on it
    except OSError as e:
        raise UsageError(f"--host {host} --port {port}: cannot listen there: {e.strerror or e}") from None
    try:
        set_threads(threads)
        net, tok = load_model(model)
        guards = [load_guard(g, net, tok) for g in guard]
        name = model_name or Path(model.rstrip("/")).name
        engine = Engine(
            net,
            tok,
            guards,
            name=name,
            max_batch=max_batch,
            max_queue=max_queue,
            batch_window_ms=batch_window_ms,
            batching=batching,
        )
        # a specific address bound is answered by that name too; a wildcard bind needs --allowed-host
        hosts = (*allowed_host, host) if not is_loopback(host) and host not in ("0.0.0.0", "::") else allowed_host
        limits = Limits(
            max_body=body_limit, read_timeout=read_timeout, max_connections=max_connections, allowed_hosts=tuple(hosts)
        )
        shown = f"guards {', '.join(g.name for g in guards)}" if guards else "no guard"
        shown += f", {engine.batching} batching"
        typer.echo(
            f"serving {name!r} ({shown}) on http://{host}:{sock.getsockname()[1]}/v1; Host names "
            f"answered: localhost, 127.0.0.1, [::1]{''.join(', ' + h for h in hosts)}",
            err=True,
        )
        uvicorn_server(create_app(engine, api_key, limits)).run(sockets=[sock])
    finally:
        sock.close()


def parse_size(text: str) -> int:
    """--max-body: "2000000", "2MB", "512kB", "1MiB" -> bytes (> 0), else UsageError."""
    m = re.fullmatch(r"\s*(\d+)\s*(b|kb|mb|gb|kib|mib|gib)?\s*", text.lower())
    if not m or int(m.group(1)) < 1:
        raise UsageError(f"--max-body must be a positive size such as 2MB, 512kB or 1048576, got {text!r}")
    scale = {None: 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    return int(m.group(1)) * scale[m.group(2)]
