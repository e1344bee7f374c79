"""`obliviate serve` on the command line: what it refuses before the model loads (an empty key, a non-loopback
bind without a key, bad limits, a port in use), each with exit 2 and one line, and what it serves once started
(the port it bound first, with its Host check, body limit and read timeout)."""

import socket
import sys
import threading
import time

import pytest

from tests.serve.test_serve_hardening import CHAT, call, chat, read_until_closed


def run_cli(args, capsys, monkeypatch, env=None):
    from obliviate.cli import main

    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "argv", ["obliviate", "serve", *args])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err.strip()


def test_cli_refuses_empty_keys_unauthenticated_exposure_and_bad_limits(target_dir, capsys, monkeypatch):
    import obliviate.models.load

    def never(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(obliviate.models.load, "load_model", never)
    monkeypatch.delenv("OBLIVIATE_API_KEY", raising=False)
    cases = [
        ([], {"OBLIVIATE_API_KEY": ""}, "empty"),
        (["--api-key", ""], {}, "empty"),
        (["--api-key", "  "], {}, "empty"),
        (["--host", "0.0.0.0"], {}, "--insecure-no-auth"),
        (["--host", "192.0.2.1"], {}, "--insecure-no-auth"),
        (["--max-body", "2XB"], {}, "--max-body"),
        (["--max-body", "0"], {}, "--max-body"),
        (["--read-timeout", "0"], {}, "--read-timeout"),
        (["--allowed-host", "a b"], {}, "--allowed-host"),
        (["--max-connections", "0"], {}, "--max-connections"),
    ]
    for args, env, word in cases:
        code, err = run_cli([str(target_dir), *args], capsys, monkeypatch, env)
        assert code == 2 and len(err.splitlines()) == 1 and word in err, (args, err)
        monkeypatch.delenv("OBLIVIATE_API_KEY", raising=False)


def test_cli_a_port_in_use_exits_2_before_the_model_loads(target_dir, capsys, monkeypatch):
    import obliviate.models.load

    def never(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(obliviate.models.load, "load_model", never)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        code, err = run_cli([str(target_dir), "--port", str(taken.getsockname()[1])], capsys, monkeypatch)
    finally:
        taken.close()
    assert code == 2 and len(err.splitlines()) == 1 and "in use" in err, err


def test_cli_serves_with_its_limits(target_dir, capsys, monkeypatch):
    """The command itself (in a thread here): it serves on the port it bound first, with its Host check, body
    limit and read timeout."""
    import obliviate.serve
    from obliviate.cli import main

    made, real = [], obliviate.serve.uvicorn_server
    monkeypatch.setattr(obliviate.serve, "uvicorn_server", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "obliviate",
            "serve",
            str(target_dir),
            "--port",
            "0",
            "--max-body",
            "1kB",
            "--read-timeout",
            "1",
            "--model-name",
            "tiny",
        ],
    )
    thread = threading.Thread(target=main)  # SystemExit at the end only ends the thread
    thread.start()
    try:
        for _ in range(600):  # bounded: 30 s
            if made and made[0].started or not thread.is_alive():
                break
            time.sleep(0.05)
        assert made and made[0].started, capsys.readouterr().err
        port = made[0].servers[0].sockets[0].getsockname()[1]
        assert f"on http://127.0.0.1:{port}/v1" in capsys.readouterr().err
        assert call(port, "GET", "/health")[0] == 200
        assert call(port, "GET", "/health", headers={"Host": "evil.example"})[0] == 421
        assert call(port, "POST", CHAT, b"x" * 1001)[0] == 413
        status, body, _ = call(port, "POST", CHAT, chat("hi", max_tokens=2))
        assert status == 200 and body["object"] == "chat.completion"
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /health HTTP/1.1\r\nHo")
        t0 = time.perf_counter()
        assert read_until_closed(s) == b"" and 0.8 < time.perf_counter() - t0 < 5
        s.close()
    finally:
        if made:
            made[0].should_exit = True
        thread.join(30)
    assert not thread.is_alive()
