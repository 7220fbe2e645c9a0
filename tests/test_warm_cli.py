"""A `domainvlm` started warm (tests/warm_cli.py, how the docs blocks run it) is the command
started cold: a script gives the same output and exit codes either way, with the script's
folder, exported variables, pipes and signals, and a killed command leaves nothing running.
A Python block run warm is the same script run by the interpreter."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import psutil
from doc_blocks import Block, run_block
from warm_cli import start_server, stop_server

PYTHON = Path(sys.executable)
SCRIPT = """\
export DOMAINVLM_CACHE="$PWD/elsewhere"
domainvlm nano path                                           # reads the exported variable
domainvlm synth-data --output shapes --images 2 | tail -n 1   # a pipe
test -s shapes/train.jsonl && echo "train.jsonl written here"
domainvlm synth-data --output big --images 100000 > /dev/null & sleep 1; kill -TERM $!
wait $! || echo "stopped: $?"
domainvlm synth-data --output big2 --images 100000 > /dev/null & sleep 1; kill -KILL $!
wait $! || echo "killed: $?"
domainvlm synth-data --outptu more --images 2
echo "not reached"
"""
PYTHON_BLOCK = """\
import os, sys
from pathlib import Path
print(__name__, sys.argv, sys.path[0] == os.getcwd(), Path(__file__).name)
print(os.environ["WHERE"])
raise SystemExit(3)
"""


def run(block: Block, folder: Path, path: str, python: Path) -> str:
    """What the block printed and its exit code, the timing line left out."""
    folder.mkdir(exist_ok=True)
    env = {**os.environ, "WHERE": "here",
           "PATH": f"{path}{os.pathsep}{PYTHON.parent}{os.pathsep}{os.environ['PATH']}"}
    outcome = run_block(block, block.text, folder, env, str(python), {})
    head, output = outcome.output.split("\n", 1)
    output = re.sub(r"\d+ (Killed|Terminated)", r"PID \1", output)  # bash's job notices
    return f"{head.split(' after ')[0]}\n{output}".replace(str(folder), "FOLDER")


def test_a_warm_command_is_the_command(tmp_path: Path) -> None:
    warm = tmp_path / "warm"
    warm.mkdir()
    server = start_server(warm, dict(os.environ), tmp_path, PYTHON, ("domainvlm.cli",))
    blocks = [Block("doc.md", 1, "bash", SCRIPT), Block("doc.md", 20, "python", PYTHON_BLOCK)]
    try:
        warm_outputs = [run(block, tmp_path / "a", str(warm), warm / "warm-python")
                        for block in blocks]
        cold_outputs = [run(block, tmp_path / "b", str(PYTHON.parent), PYTHON)
                        for block in blocks]
        deadline = time.monotonic() + 10
        while psutil.Process(server.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = psutil.Process(server.pid).children()
    finally:
        stop_server(server)
    assert warm_outputs == cold_outputs
    for line in ("exit 2", "FOLDER/elsewhere/nano/", "train.jsonl written here",
                 "stopped: 143", "killed: 137", "No such option: --outptu"):
        assert line in warm_outputs[0]
    assert "not reached" not in warm_outputs[0]
    assert warm_outputs[1] == ("exit 3\n__main__ ['.docs-block-20.py'] True .docs-block-20.py\n"
                               "here\n")
    assert not left, "the killed command's process still runs"
    for stopped in ("big", "big2"):  # stopped, not left to finish
        assert not (tmp_path / "a" / stopped / "train.jsonl").exists()
