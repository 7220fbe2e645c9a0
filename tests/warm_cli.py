"""`domainvlm` commands (and `python SCRIPT`) started warm: forked from a process that has already
imported torch, transformers and peft, so the commands of docs blocks and CLI tests do not each
spend seconds on imports (tests/test_docs.py; the `warm_domainvlm` fixture of conftest.py).

    python warm_cli.py SOCKET [MODULE ...]    # the server (start_server): imports, then serves

A command stays a real process: `domainvlm` (first on PATH in docs blocks) is a shim
(`write_shims`) that hands its argv, working folder, environment and stdin/stdout/stderr to the
server over a Unix socket; the server forks, and the child runs `domainvlm.cli.main()` as the
console script would, as a fresh process does from then on (its exit, `atexit`, flushes), and
from the same starting state each time. `warm-python SCRIPT ARGS` is `python SCRIPT ARGS` alike
(runpy, as the interpreter runs a script). The shim exits with the child's exit code (or dies of
the child's signal), passes on SIGINT, SIGTERM and SIGHUP, and if the shim itself is killed, so
is the child. Imported ahead (PRELOAD) are third-party modules and `domainvlm.cli`, which the
console script imports first anyway: an import our own code forgot would still fail.

Standard library only at module level: multiprocessing's spawn re-imports this file as the main
module of its workers.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# What the CLI's commands import lazily and spend their first seconds on.
PRELOAD = ("numpy", "PIL.Image", "torch", "transformers", "transformers.modeling_utils",
           "transformers.models.auto.modeling_auto", "transformers.models.auto.processing_auto",
           "peft", "accelerate", "torch.utils.tensorboard", "domainvlm.cli")
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_MAX_MESSAGE = 1 << 20  # argv + environment of one command

SHIM = """#!{python} -IS
# `{kind}`, started warm by tests/warm_cli.py (its server holds the imports).
import json, os, signal, socket, sys

conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
try:
    conn.connect({socket_path!r})
except OSError as exc:
    sys.exit(f"{kind} (warm, tests/warm_cli.py): no server at {socket_path}: {{exc}}")
request = {{"kind": {kind!r}, "argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ)}}
socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
for number in {forwarded!r}:
    signal.signal(number, lambda n, _frame: conn.send(str(n).encode()))
reply = conn.recv(64)
if not reply:
    sys.exit("{kind} (warm, tests/warm_cli.py): the server went away")
status = int(reply)
if status < 0:  # the command died of a signal: so does its stand-in
    signal.signal(-status, signal.SIG_DFL)
    os.kill(os.getpid(), -status)
sys.exit(status)
"""


def write_shims(folder: Path, socket_path: Path, python: Path) -> None:
    """`folder/domainvlm`, the stand-in to put first on PATH, and `folder/warm-python`."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind in ("domainvlm", "warm-python"):
        shim = folder / kind
        shim.write_text(SHIM.format(python=python, kind=kind, socket_path=str(socket_path),
                                    forwarded=tuple(int(n) for n in _FORWARDED)))
        shim.chmod(0o755)


def start_server(folder: Path, env: dict[str, str], cwd: Path, python: Path,
                 preload: tuple[str, ...]) -> subprocess.Popen:
    """A server, its shims in `folder` and its log `folder/server.log`; it starts in `env`
    (what the commands' environment starts from, for what modules read as they are imported)."""
    socket_path = folder / "sock"
    write_shims(folder, socket_path, python)
    with (folder / "server.log").open("wb") as log:
        server = subprocess.Popen([str(python), __file__, str(socket_path), *preload], env=env,
                                  cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    while not socket_path.exists():  # bound first thing; commands then queue for the imports
        if server.poll() is not None:
            raise RuntimeError(f"warm_cli.py exited {server.returncode}: "
                               f"{(folder / 'server.log').read_text()[-2000:]}")
        time.sleep(0.01)
    return server


def stop_server(server: subprocess.Popen) -> None:
    """Stop it, and with it any command still running."""
    server.terminate()
    server.wait(timeout=60)


def serve(socket_path: str, preload: list[str]) -> dict | None:
    """Fork a child per command until SIGTERM or the parent's end. Returns None in the server
    and the command's request (argv, cwd, env) in each child, which has the shim's stdin,
    stdout and stderr and nothing else of the server."""
    import importlib

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(socket_path)  # before the imports: early commands wait in the backlog
    listener.listen(64)
    for name in preload:
        importlib.import_module(name)
    gc.freeze()  # what is loaded stays shared: children's collections neither scan nor copy it
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda number, _frame: stopping.append(number))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    running: dict[int, socket.socket] = {}  # child pid -> its shim's connection
    parent = os.getppid()
    while not stopping and os.getppid() == parent:  # a killed test run leaves no server
        for key, _ in selector.select(timeout=0.05):
            if key.fileobj is not listener:  # a shim's signal, or the shim is gone
                data = key.fileobj.recv(16)
                if not data:
                    selector.unregister(key.fileobj)
                os.kill(key.data, int(data) if data else signal.SIGKILL)
                continue
            conn, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(conn, _MAX_MESSAGE, 3)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                selector.close()
                for held in (listener, conn, *running.values()):
                    held.close()
                for target, fd in enumerate(fds):
                    os.dup2(fd, target)
                    os.close(fd)
                return json.loads(message)
            for fd in fds:
                os.close(fd)
            running[pid] = conn
            selector.register(conn, selectors.EVENT_READ, pid)
        _reap(running, selector)
    for pid in running:
        os.kill(pid, signal.SIGKILL)
    return None


def _reap(running: dict[int, socket.socket], selector: selectors.BaseSelector) -> None:
    """Send each finished command's exit code, or minus the signal that killed it, to its shim."""
    while running:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        conn = running.pop(pid)
        if conn in selector.get_map():
            selector.unregister(conn)
        with contextlib.suppress(OSError):  # unless its shim is gone
            conn.send(str(os.waitstatus_to_exitcode(status)).encode())
        conn.close()


def run_command(request: dict) -> None:
    """Be `domainvlm ARGV` as the console script is, or `python SCRIPT ARGS` as the interpreter
    runs a script, in the shim's folder and environment."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if request["kind"] == "domainvlm":
        sys.argv = request["argv"]
        from domainvlm.cli import main

        sys.exit(main())
    sys.argv = request["argv"][1:]
    if not sys.argv or sys.argv[0].startswith("-"):
        sys.exit("warm-python runs `python SCRIPT [ARGS]` only")
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
    import runpy

    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    sys.path[0] = str(Path(sys.argv[1]).parent)  # the shim's folder, as a console script's
    command = serve(sys.argv[1], sys.argv[2:])
    if command is not None:
        run_command(command)
