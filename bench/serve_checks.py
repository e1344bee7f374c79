"""The server's defences, measured on loopback: `python bench/serve_load.py --hardening [--model DIR]`.

Prints, for a server started in this process: how fast an 8 MB body gets its 413 (announced by Content-Length, and
chunked with none) and how /health answers meanwhile; a 1.9 MB prompt under the limit (tokenised off the event
loop); how fast a full queue answers 429; a guard that raises on one request of a batch; a worker thread that dies
(503); a `Host: evil.example`; 20 slow partial bodies and 20 slow heads against a 2 s read timeout. Every loop is
bounded; nothing leaves loopback. It prints figures; the assertions live in tests/serve/test_serve_hardening.py.
"""

import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from obliviate.engine.hooks import Guard

CHAT = "/v1/chat/completions"


def call(port, method, path, body=None, headers=None, timeout=60):
    """(status, seconds, raw body)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request(
        method,
        path,
        body=json.dumps(body).encode() if isinstance(body, dict) else body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, time.perf_counter() - t0, data


def chat(text, **fields):
    return {"model": "bench", "messages": [{"role": "user", "content": text}], **fields}


class Poll:
    """/health from a thread while a block runs: its latencies (s) and statuses."""

    def __init__(self, port):
        self.port, self.lat, self.statuses, self.stop = port, [], [], threading.Event()

    def __enter__(self):
        def run():
            while not self.stop.is_set():
                status, dt, _ = call(self.port, "GET", "/health")
                self.lat.append(dt)
                self.statuses.append(status)
                time.sleep(0.005)

        self.thread = threading.Thread(target=run)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)

    def summary(self) -> str:
        lat = sorted(self.lat)
        return (
            f"/health {len(lat)} answers ({sorted(set(self.statuses))}): p50 {lat[len(lat) // 2] * 1e3:.1f} ms, "
            f"max {lat[-1] * 1e3:.1f} ms"
        )


def send_big(port, size, chunked=False):
    """Send a POST whose body has `size` bytes (Content-Length, or chunked with none), from a thread, and read the
    answer's head concurrently. Returns (status, seconds from the first byte sent to the status line)."""
    got, dt = _send_big(port, size, chunked, lambda got: b"\r\n" in got)
    return int(got.split(b" ")[1]), dt


def send_big_answer(port, size):
    """As `send_big` (Content-Length), but read the whole answer: (status, its JSON body)."""
    got, _ = _send_big(port, size, False, lambda got: len(got.partition(b"\r\n\r\n")[2]) >= _length(got))
    head, _, body = got.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body[: _length(got)])


def _length(got: bytes) -> int:
    """The Content-Length of the head read so far (a huge number until the head is complete or if it has none)."""
    head, sep, _ = got.partition(b"\r\n\r\n")
    for line in head.lower().split(b"\r\n") if sep else ():
        if line.startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 30


def _send_big(port, size, chunked, done):
    """Send the POST's body from a thread that tolerates the server closing early (a 413 answered before the body
    is read closes the connection while the body is still being written), and read the answer until `done(bytes
    read so far)` or the connection closes. Returns (bytes read, seconds from the first byte sent to then)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"Content-Length: %d\r\n\r\n" % size

    def pump():
        try:
            if chunked:
                piece = b"x" * 65536
                for _ in range(size // len(piece)):
                    sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sock.sendall(b"0\r\n\r\n")
            else:
                sock.sendall(b"x" * size)
        except OSError:  # the server answered and closed: the rest of the body was never wanted
            pass

    t0 = time.perf_counter()
    sock.sendall(head)
    sender = threading.Thread(target=pump)
    sender.start()
    got = b""
    while not done(got):
        piece = sock.recv(65536)
        if not piece:
            break
        got += piece
    dt = time.perf_counter() - t0
    sender.join(30)
    sock.close()
    return got, dt


@dataclass
class Explode(Guard):
    """Raises, at the first check, on the rows whose request mentions `word`."""

    name = "explode"
    every = 1
    word: str = "explode"

    def on_step(self, step, ids, session):
        if any(self.word in (row.text or "") for row in session.rows):
            raise RuntimeError("guard bug: tensor shapes (3, 4) and (5,) disagree")


class WorkerKilled(BaseException):
    """What no `except Exception` stops: the worker thread ends."""


@dataclass
class Fatal(Guard):
    name = "fatal"

    def process_logits(self, step, ids, logits, rows):
        if any("die" in (row.text or "") for row in rows):
            raise WorkerKilled("the worker is gone")
        return logits


def ms(xs) -> str:
    xs = sorted(xs)
    return f"median {xs[len(xs) // 2] * 1e3:.1f} ms, max {xs[-1] * 1e3:.1f} ms"


def hardening(path: Path, questions: list[str]) -> None:
    import logging

    from obliviate.models.load import load_model
    from obliviate.serve import Engine, Limits, background_server, create_app

    logging.getLogger("obliviate.serve").addFilter(lambda record: False)  # the failures below are on purpose
    model, tok = load_model(str(path))

    def server(guards=(), limits=None, **kw):
        return background_server(create_app(Engine(model, tok, guards, name="bench", **kw), None, limits))

    with server() as port:
        for chunked in (False, True):
            with Poll(port) as health:
                tries = [send_big(port, 8_000_000, chunked) for _ in range(10)]
            print(
                f"8 MB body, {'chunked' if chunked else 'Content-Length'}: statuses "
                f"{sorted({s for s, _ in tries})}, 413 in {ms([dt for _, dt in tries])}; {health.summary()}"
            )
        prompt = " ".join(questions) * (1_900_000 // len(" ".join(questions)))
        with Poll(port) as health:
            status, dt, _ = call(port, "POST", CHAT, chat(prompt[:1_900_000]))
        print(f"1.9 MB prompt: {status} in {dt * 1e3:.0f} ms; {health.summary()}")
        status, dt, _ = call(port, "GET", "/health", headers={"Host": "evil.example"})
        print(
            f"Host: evil.example -> {status}; Host: localhost -> "
            f"{call(port, 'GET', '/health', headers={'Host': 'localhost'})[0]}"
        )

    with server(max_queue=4, max_batch=4) as port:
        out = []
        threads = [
            threading.Thread(target=lambda: out.append(call(port, "POST", CHAT, chat(questions[0], max_tokens=32))))
            for _ in range(32)
        ]
        [t.start() for t in threads]
        [t.join(300) for t in threads]
        busy = [dt for status, dt, _ in out if status == 429]
        print(
            f"32 at once, queue of 4: {len(busy)} got 429 in {ms(busy) if busy else '-'}; "
            f"{sum(s == 200 for s, _, _ in out)} got 200"
        )

    with server([Explode()], max_batch=2, batch_window_ms=10_000) as port:
        out = {}
        threads = [
            threading.Thread(target=lambda q=q: out.__setitem__(q, call(port, "POST", CHAT, chat(q, max_tokens=8))))
            for q in (questions[0], "please explode")
        ]
        [t.start() for t in threads]
        [t.join(120) for t in threads]
        bad = json.loads(out["please explode"][2])["error"]["message"]
        print(
            f"a guard raising on one request of a batch of 2: innocent {out[questions[0]][0]}, "
            f"raising {out['please explode'][0]} ({bad!r})"
        )

    with server([Fatal()]) as port:
        status, dt, _ = call(port, "POST", CHAT, chat("die", max_tokens=4))
        time.sleep(0.1)
        after, dt2, _ = call(port, "POST", CHAT, chat(questions[0], max_tokens=4))
        print(
            f"worker killed: that request {status} in {dt * 1e3:.0f} ms; /health -> "
            f"{call(port, 'GET', '/health')[0]}; the next request {after} in {dt2 * 1e3:.1f} ms"
        )

    with server(limits=Limits(read_timeout=2.0)) as port:
        for label, opening in (
            (
                "partial bodies",
                b'POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n{"model": ',
            ),
            ("partial heads", b"POST /v1/chat/completions HTTP/1.1\r\nHost: loc"),
        ):
            socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
            t0 = time.perf_counter()
            for s in socks:
                s.sendall(opening)
            closed, first = [], []
            for s in socks:
                s.settimeout(30)
                data = b""
                while piece := s.recv(4096):
                    data += piece
                closed.append(time.perf_counter() - t0)
                first.append(data[:12].decode() or "(nothing)")
                s.close()
            print(f"20 slow {label}, --read-timeout 2: all closed by {max(closed):.2f} s, answers {sorted(set(first))}")
