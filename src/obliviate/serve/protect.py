"""What stands between a connection and the routes: the limits a server runs under (`Limits`), and one ASGI
middleware (`Gate`) that checks, in this order and before any body is parsed, the `Host` header against an
allowlist (DNS rebinding), the API key on /v1/*, and the body: its size (413) and how long it takes to arrive
(408). Every refusal has OpenAI's error shape."""

import asyncio
import hashlib
import hmac
import json
from dataclasses import dataclass

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")  # any port


@dataclass(frozen=True)
class Limits:
    """max_body: bytes a request body may have (413 beyond it, before parsing). read_timeout: seconds a client has
    to send a request's head (else the connection is closed) and then its whole body (else 408). max_connections:
    open connections at most (uvicorn answers 503 beyond). keep_alive: seconds an idle connection stays open.
    allowed_hosts: `Host` names served besides the loopback names ("*": any)."""

    max_body: int = 2_000_000
    read_timeout: float = 30.0
    max_connections: int = 256
    keep_alive: float = 5.0
    allowed_hosts: tuple[str, ...] = ()


def host_name(value: str) -> str:
    """A `Host` header value (or an --allowed-host entry) -> its lower-case name, without port or brackets:
    "LocalHost:8000" -> "localhost", "[::1]:8000" -> "::1", "example.com." -> "example.com"."""
    value = value.strip().lower()
    if value.startswith("["):  # an IPv6 literal, maybe with a port
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def error_body(message: str, code: str, type: str = "invalid_request_error", param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


async def reply(send, status: int, body: dict, close: bool = False) -> None:
    """A whole JSON response. `close`: the connection closes after it (the request's body was not read)."""
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": headers + ([(b"connection", b"close")] if close else []),
        }
    )
    await send({"type": "http.response.body", "body": data, "more_body": False})


class Gate:
    """ASGI middleware: the Host allowlist, the API key (`Authorization: Bearer KEY`, the scheme in any case, the
    key compared in constant time) on /v1/*, and the body limit and read deadline. A body that passes is read
    whole here and replayed to the app, so nothing downstream reads more than `max_body` bytes."""

    def __init__(self, app, limits: Limits, api_key: str | None = None):
        self.app, self.limits = app, limits
        names = {host_name(h) for h in limits.allowed_hosts} - {""}  # a missing Host is never allowed
        self.any_host = "*" in names
        self.hosts = frozenset(LOOPBACK_NAMES) | names
        self.key = hashlib.sha256(api_key.encode()).digest() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if not self.any_host and host_name(headers.get(b"host", b"").decode("latin-1")) not in self.hosts:
            return await reply(
                send,
                421,
                error_body(
                    "this server does not answer for that Host (loopback names, and --allowed-host)", "host_not_allowed"
                ),
            )
        if self.key is not None and scope["path"].startswith("/v1") and not self._authorized(headers):
            return await reply(
                send, 401, error_body("missing or wrong API key (send Authorization: Bearer KEY)", "invalid_api_key")
            )
        if b"content-length" not in headers and b"transfer-encoding" not in headers:
            return await self.app(scope, receive, send)  # no body
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limits.max_body:
            return await reply(send, 413, self._too_large(), close=True)
        try:
            body = await asyncio.wait_for(self._read(receive), self.limits.read_timeout)
        except asyncio.TimeoutError:
            return await reply(
                send,
                408,
                error_body(
                    f"the request body did not arrive within {self.limits.read_timeout:g} s (--read-timeout)",
                    "request_timeout",
                ),
                close=True,
            )
        if body is None:  # a chunked body over the limit, counted as it streamed
            return await reply(send, 413, self._too_large(), close=True)
        if body is False:  # the client went away
            return None
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _read(self, receive):
        """The whole body; None once it passes max_body; False if the client disconnects first."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _authorized(self, headers: dict) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").strip().partition(b" ")
        digest = hashlib.sha256(token.strip()).digest()
        return hmac.compare_digest(digest, self.key) and scheme.lower() == b"bearer"

    def _too_large(self) -> dict:
        return error_body(
            f"the request body is larger than this server's limit of {self.limits.max_body} bytes (--max-body)",
            "request_too_large",
        )
