"""Shared fixtures."""

from __future__ import annotations

import pytest
import trio
import trio.testing


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    """Virtual time that jumps straight to the next deadline whenever every task is idle.

    pytest-trio picks up a fixture named ``mock_clock`` as the run's clock.
    """
    return trio.testing.MockClock(autojump_threshold=0)


# --- Redis for the rate-limiter tests ----------------------------------------------------------
# A real redis-server on a free 127.0.0.1 port, started by the tests. Where it is not installed
# the Redis tests skip, except under RAKKA_REQUIRE_REDIS=1 (set by .ci/run): there they fail.

import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A redis-server child process the test can stop, kill and restart on the same port."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (no persistence: a restart loses every key) and wait for PING."""
        self.process = subprocess.Popen(
            [
                self.executable,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def ping(self) -> bool:
        """True when the server answers PING."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Kill the server at once (SIGKILL: no shutdown, every key lost)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        """Kill and start again on the same port (empty)."""
        self.kill()
        self.start()

    def command(self, *args: str) -> bytes:
        """Run one command through a raw socket (inline protocol); the raw reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as conn:
            conn.sendall(" ".join(args).encode() + b"\r\n")
            return conn.recv(65536)


def _redis_executable() -> str:
    found = shutil.which("redis-server")
    if found is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("RAKKA_REQUIRE_REDIS") == "1":
            pytest.fail(message + "; RAKKA_REQUIRE_REDIS=1 forbids skipping the Redis tests")
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server shared by the tests that don't stop it (use distinct keys)."""
    server = RedisServer(_redis_executable())
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, free to kill and restart."""
    server = RedisServer(_redis_executable())
    server.start()
    try:
        yield server
    finally:
        server.kill()
