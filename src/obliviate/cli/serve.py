"""`obliviate serve MODEL`: an OpenAI-compatible chat server with inference-time guards (see obliviate.serve).

fastapi, uvicorn and the model are imported inside the command, so `--help` stays fast.
"""

from pathlib import Path
from typing import List, Optional

import typer

from obliviate.cli.common import set_threads
from obliviate.errors import UsageError


def serve(model: str = typer.Argument(..., help="HF chat model directory (or hub id when online)"),
          guard: List[Path] = typer.Option([], help="a fitted guard directory (repeatable; applied in order)"),
          host: str = typer.Option("127.0.0.1", help="address to bind (loopback by default; 0.0.0.0 exposes it)"),
          port: int = typer.Option(8000),
          api_key: Optional[str] = typer.Option(None, envvar="OBLIVIATE_API_KEY",
                                                help="require `Authorization: Bearer KEY` on /v1/*"),
          model_name: Optional[str] = typer.Option(None, help="the name clients send as `model` (default: the "
                                                   "model directory's name)"),
          max_batch: int = typer.Option(16, help="requests decoded together at most (1: no batching)"),
          max_queue: int = typer.Option(64, help="requests queued or decoding at most; more get 429"),
          batch_window_ms: float = typer.Option(10.0, help="how long the first request of a batch waits for more"),
          threads: Optional[int] = typer.Option(None, help="torch CPU threads")):
    """Serve MODEL on /v1/chat/completions (greedy decoding, streamed or not), /v1/models and /health, with the
    --guard directories applied to every reply (a halted reply has finish_reason "content_filter")."""
    if max_batch < 1 or max_queue < 1 or batch_window_ms < 0:
        raise UsageError("--max-batch and --max-queue must be >= 1 and --batch-window-ms >= 0")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {port}")
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise UsageError("obliviate serve needs fastapi and uvicorn: pip install 'obliviate[serve]'") from None
    from obliviate.guards import check_guard_dirs, load_guard
    from obliviate.models.load import check_model_dir, load_model
    from obliviate.serve import Engine, create_app

    check_guard_dirs(guard)  # fail fast, before the model loads
    check_model_dir(model)
    set_threads(threads)
    net, tok = load_model(model)
    guards = [load_guard(g, net, tok) for g in guard]
    name = model_name or Path(model.rstrip("/")).name
    engine = Engine(net, tok, guards, name=name, max_batch=max_batch, max_queue=max_queue,
                    batch_window_ms=batch_window_ms)
    shown = f"guards {', '.join(g.name for g in guards)}" if guards else "no guard"
    typer.echo(f"serving {name!r} ({shown}) on http://{host}:{port}/v1", err=True)
    uvicorn.run(create_app(engine, api_key), host=host, port=port, log_level="info")
