"""A throwaway redis-server for tests: own port, own directory, AOF on, killable and restartable."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it for a socket bound to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_redis_server() -> str:
    """The redis-server executable; without one, fail in CI (CI=1) and skip elsewhere."""
    exe = shutil.which("redis-server")
    if exe is None:
        message = (
            "redis-server is not on PATH; install it (apt-get install redis-server, "
            "brew install redis) to run the Redis presence tests"
        )
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return exe


class RedisServer:
    """One redis-server process on 127.0.0.1:`port`, persisting to an append-only file in `dir`.

    appendfsync "always" makes every acknowledged write durable, so a test can kill the server
    and expect acknowledged records back after restart().
    """

    def __init__(self, port: int, dir: Path | str, appendfsync: str = "always") -> None:
        self.port = port
        self.dir = Path(dir)
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it accepts connections and has loaded its data."""
        exe = require_redis_server()
        self.dir.mkdir(parents=True, exist_ok=True)
        # Output goes to a log file, not a pipe: a pipe nobody reads could block the server.
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - handed to the child process
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", self.appendfsync, "--dir", str(self.dir)]
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{tail}")
            if self._ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout} s")

    def _ping(self) -> bool:
        """True once the server answers PING with PONG (not LOADING)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), killing if it takes longer than 5 s."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Kill abruptly (SIGKILL), as a crash would: only what was fsynced survives."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Start again on the same port and directory (after stop() or kill())."""
        if self.proc is not None:
            self.stop()
        self.start()
