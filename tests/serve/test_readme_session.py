"""README's serving session, run as written: its `domainvlm serve` command in the background,
then its curl session and its Python client block against that server.

test_docs.py runs every other block; these three are marked for this test because a server
runs until stopped. The folder holds what the README's earlier blocks make (a tiny model, an
adapter store with `shapes@1`, alice's key, the project key) plus a zipped DICOM study.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from doc_blocks import read_blocks
from server import free_port, running_server

ROOT = Path(__file__).resolve().parents[2]
MARK = "tests/serve/test_readme_session.py"

sys.path.insert(0, str(Path(__file__).parents[1] / "adapters"))
from factory import make_adapter  # noqa: E402


def session_blocks():
    blocks = [b for b in read_blocks(ROOT / "README.md", "README.md") if b.skip and MARK in b.skip]
    assert [b.lang for b in blocks] == ["bash", "bash", "python"], blocks
    return blocks


@pytest.fixture(scope="module")
def folder(tiny_models, shapes_data, tmp_path_factory) -> Path:
    from domainvlm.adapters.store import AdapterStore
    from domainvlm.medical.ct_writer import SeriesSpec, write_ct_series
    from domainvlm.medical.keys import write_key_file

    here = tmp_path_factory.mktemp("readme-session")
    shutil.copytree(tiny_models("llava"), here / "tiny-llava")
    AdapterStore(here / "store").add(make_adapter(here / "tiny-llava", here / "made"),
                                     "shapes")
    shutil.copytree(shapes_data["eval"].parent / "images", here / "shapes" / "images")
    write_key_file(here / "project.key")
    spec = SeriesSpec(pydicom.uid.generate_uid(), pydicom.uid.generate_uid())
    hu = np.random.default_rng(0).integers(-1000, 1500, size=(4, 32, 32)).astype(np.float32)
    with zipfile.ZipFile(here / "study.zip", "w") as archive:
        for path in write_ct_series(hu, here / "series", spec):
            archive.write(path, path.name)
    done = subprocess.run([sys.executable, "-m", "domainvlm.cli", "serve", "keys", "add",
                           "alice", "--data-dir", str(here / "serve-data")], cwd=here,
                          capture_output=True, text=True, check=True)
    (here / "alice.key").write_text(done.stdout)
    return here


def test_the_readme_serving_session_runs_as_written(folder: Path) -> None:
    serve, curl, python = session_blocks()
    port = free_port()
    words = serve.text.split()
    assert words[:2] == ["domainvlm", "serve"] and "--data-dir" in words
    at = words.index("--data-dir")
    args = words[2:at] + words[at + 2:]  # running_server passes --data-dir itself
    with running_server(args, folder / words[at + 1], port=port, cwd=folder):
        env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
        shell = curl.text.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        ran = subprocess.run(["bash", "-euo", "pipefail", "-c", shell], cwd=folder,
                             env=env, capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0, ran.stderr
        replies = json_values(ran.stdout)  # curl -s prints each body with no newline
        assert replies[0] == {"status": "ok"}
        assert [card["ref"] for card in replies[1]["adapters"]] == ["shapes@1"]
        assert replies[2]["adapter"] == "shapes@1" and isinstance(replies[2]["answer"], str)
        assert replies[3]["adapter"] == "shapes@1" and len(replies[3]["answers"]) == 1
        code = python.text.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        ran = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env,
                             capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.strip()  # answers of a tiny random model: any text


def json_values(text: str) -> list:
    """The JSON values written one after another in `text`."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        value, at = decoder.raw_decode(text, at)
        values.append(value)
    return values
