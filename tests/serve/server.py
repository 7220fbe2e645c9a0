"""Start the real `domainvlm serve` (uvicorn on 127.0.0.1, a free port) for a test, and stop it.

The server runs in its own process, exactly as a user starts it; its stdout and stderr go to
a log file the test can search (no PHI may reach it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    data_dir: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(args: list[str], data_dir: Path, *, env: dict[str, str] | None = None,
                   ready_timeout: float = 180.0, wait_ready: bool = True,
                   scheme: str = "http", ca: Path | None = None, port: int | None = None,
                   cwd: Path | None = None) -> Iterator[Server]:
    """`domainvlm serve ARGS --data-dir DATA_DIR --port FREE` until the block ends (SIGTERM,
    then a kill after 60 s). With TLS, `scheme="https"` and `ca` the certificate to trust."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"server-{port}.log"
    command = [sys.executable, "-m", "domainvlm.cli", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--data-dir", str(data_dir), *args]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                **(env or {})}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=full_env,
                                   cwd=cwd)
    server = Server(f"{scheme}://127.0.0.1:{port}", process, log, data_dir)
    try:
        _wait(server, "/health/ready" if wait_ready else "/health", ready_timeout, ca)
        yield server
    finally:
        stop(server)


def stop(server: Server, timeout: float = 60.0) -> int:
    """SIGTERM (graceful: in-flight requests finish), then kill; the exit code."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


def _wait(server: Server, path: str, timeout: float, ca: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n"
                               f"{server.log_text()[-3000:]}")
        try:
            reply = requests.get(server.url + path, timeout=2, verify=str(ca) if ca else True)
            if reply.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout} s:\n{server.log_text()[-3000:]}")
