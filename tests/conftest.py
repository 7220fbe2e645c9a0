"""Shared fixtures: tiny real-architecture models and a small synthetic VQA set, built once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every DDS participant of the session (the ROS node, its peers, docs' commands) stays on
# loopback, in a ROS domain of this run's own so parallel runs never cross.
from domainvlm.ros.dds import LOOPBACK_CYCLONEDDS  # noqa: E402

os.environ["CYCLONEDDS_URI"] = LOOPBACK_CYCLONEDDS
os.environ["ROS_DOMAIN_ID"] = str(__import__("random").SystemRandom().randint(1, 100))

import pytest  # noqa: E402
from testkit import TINY_NANO_RECIPE  # noqa: E402
from warm_cli import PRELOAD, start_server, stop_server  # noqa: E402

from domainvlm.nano.shapes_world import write_shapes_dataset  # noqa: E402
from domainvlm.tiny import build_tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_benchmark(tmp_path: Path):
    """Run `benchmarks/<script> ARGS --workdir tmp_path --output tmp_path/result.json` in a
    subprocess; returns its stdout JSON, checked to exit 0 and to equal the --output file."""
    def run(script: str, *args: str, timeout: int = 300) -> dict:
        output = tmp_path / "result.json"
        done = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / script), *args,
             "--workdir", str(tmp_path), "--output", str(output)],
            capture_output=True, text=True, cwd=ROOT, timeout=timeout)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout)
        assert json.loads(output.read_text()) == result
        return result

    return run


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["DOMAINVLM_CACHE"] = str(tmp_path_factory.mktemp("domainvlm-cache"))


@pytest.fixture(scope="session")
def warm_domainvlm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`domainvlm` started warm (tests/warm_cli.py): each command its own process with its own
    argv, environment, exit code and output, forked from a server that imported torch and
    transformers once. For tests of what a command does; a test of how a process starts (the
    console script, settings read at import, a signal to the process itself) runs it cold."""
    folder = tmp_path_factory.mktemp("warm-domainvlm")
    server = start_server(folder, dict(os.environ), ROOT, Path(sys.executable), PRELOAD)
    yield str(folder / "domainvlm")
    stop_server(server)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """family -> folder of a tiny model, built on first use and shared by the session."""
    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_model(family, root / family, seed=0)
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_nano() -> Path:
    """The nano recipe shrunk (tiny model, a few scenes): pretrained by our engine once a
    session."""
    from domainvlm.nano import ensure_nano

    return ensure_nano(TINY_NANO_RECIPE)


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """train.jsonl / eval.jsonl of coloured-shape questions with their images.

    Without the captions: engine tests compare runs step by step at a high learning rate, and
    one- or two-word answers keep float32 padding effects below their 1e-5 bounds (the
    synthetic world, captions included, is tested in tests/nano/test_shapes_world.py).
    """
    import json

    paths = write_shapes_dataset(tmp_path_factory.mktemp("shapes"), n_images=12, seed=0)
    for path in paths.values():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows
                                if r["question"] != "Describe the image."))
    return paths
