"""Running the app under uvicorn with its `Limits`: the listening socket bound first (so a taken port is known
before a model loads), a deadline on each request's head, the connection limit, and a loopback server thread for
tests and benchmarks."""

import copy
import ipaddress
import socket
import threading
import time
from contextlib import contextmanager

from obliviate.serve.protect import LOOPBACK_NAMES, Limits


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine ("localhost", 127.0.0.0/8, ::1)."""
    if host.strip().lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port), or OSError (the port is taken, the address is not this machine's,
    the name does not resolve). uvicorn serves on it as given."""
    infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT, not one in use
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _protocol(head_timeout: float):
    """uvicorn's h11 protocol, with a deadline on the request head: a connection whose request line and headers
    have not all arrived `head_timeout` s after it opened (or after its previous response) is closed. Without it,
    a client that sends its headers a byte at a time holds a connection forever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadline(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._seen, self._head = None, None
            self._arm()

        def _arm(self):
            self._head = self.loop.call_later(head_timeout, self._too_slow)

        def _too_slow(self):
            self._head = None
            if not self.transport.is_closing() and (self.cycle is None or self.cycle is self._seen):
                self.transport.close()

        def handle_events(self):
            super().handle_events()
            if self.cycle is not None and self.cycle is not self._seen:  # a new request's head has arrived
                self._seen = self.cycle
                if self._head is not None:
                    self._head.cancel()
                    self._head = None

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing() and self._head is None:
                self._arm()

        def connection_lost(self, exc):
            if self._head is not None:
                self._head.cancel()
                self._head = None
            super().connection_lost(exc)

    return HeadDeadline


def uvicorn_server(app, log_level: str = "info"):
    """A uvicorn.Server for `app` (made by `create_app`) under the app's `Limits`. The `obliviate.serve` log (why a
    request failed; never a prompt) is printed as uvicorn's own lines are."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    limits: Limits = getattr(app.state, "limits", Limits())
    logging = copy.deepcopy(LOGGING_CONFIG)
    logging["loggers"]["obliviate.serve"] = {"handlers": ["default"], "level": "INFO", "propagate": True}
    return uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=log_level,
            log_config=logging,
            lifespan="on",
            http=_protocol(limits.read_timeout),
            limit_concurrency=limits.max_connections,
            timeout_keep_alive=limits.keep_alive,
        )
    )


@contextmanager
def background_server(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
    """Run `app` under uvicorn in a thread (tests, benchmarks); yields the bound port; stops it on exit."""
    sock = bind(host, port)
    server = uvicorn_server(app, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="obliviate-serve", daemon=True)
    thread.start()
    t0 = time.monotonic()
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() - t0 > timeout:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
