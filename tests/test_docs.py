"""Every code block of README.md and docs/*.md runs, so the docs cannot rot.

Blocks run in document order, each document in its own folder (a block may use what an earlier
block of its document wrote), with the project's `.venv/bin` first on PATH, HOME in that folder
and the hub offline. Each `domainvlm` command and Python block is started warm
(tests/warm_cli.py): forked from a process that has imported torch and transformers once per
document. What the docs say for a user's real world is swapped for a small local one, by the two
tables below: hub ids become tiny random models of the same architecture
(`domainvlm.tiny.build_tiny_model`), and long runs are cut short. Each document's folder starts
with the files a user brings (`_seed`). Blocks that cannot run here are marked in the Markdown
`<!-- docs-test: skip (reason) -->` and counted in EXPECTED_SKIPS.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from doc_blocks import Block, DocError, Outcome, read_blocks, run_block, substitute
from warm_cli import PRELOAD, start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]

# Hub id -> tiny-model family standing in for it.
HUB_MODELS = {
    "llava-hf/llava-1.5-7b-hf": "llava",
    "Qwen/Qwen2.5-VL-3B-Instruct": "qwen2.5-vl",
}
# Open-vocabulary detectors and teachers the docs name: tiny random ones of the same kind.
HUB_DETECTORS = {
    "google/owlv2-base-patch16-ensemble": "owlv2",
    "openai/clip-vit-base-patch32": "clip",
}

# Big numbers made small (regex, replacement): the same commands on a few records and steps.
SMALLER = [
    (r"--epochs 3\b", "--epochs 1"),  # on SEEDED's few rows: a handful of steps
    (r"\bepochs=3\b", "epochs=1"),
    (r"\bepochs: 3\b", "epochs: 1"),
    (r"--images 64\b", "--images 4"),  # synth-data scenes
    (r"--patients 40\b", "--patients 10"),  # synthetic CT patients
    (r"\bsteps: 2000\b", "steps: 4"),  # a distillation run
]

# Blocks marked skip, per document: keep this short, and change it only with the Markdown.
EXPECTED_SKIPS = {"README.md": 10, "docs/engine.md": 2, "docs/ros.md": 2}


def _blocks() -> list[Block]:
    return [block for doc in DOCS for block in read_blocks(ROOT / doc, doc)]


def _validate_finetune_config(path: Path) -> None:
    from domainvlm.train.config import build_config, load_yaml

    build_config(load_yaml(path), source=str(path))


def _validate_nano_recipe(path: Path) -> None:
    from domainvlm.nano import load_recipe

    load_recipe(path)


def _validate_distill_config(path: Path) -> None:
    from domainvlm.detection.distill import DistillConfig

    DistillConfig.from_yaml(path)


def _validate_records(path: Path) -> None:
    from domainvlm.data.records import load_records

    assert load_records(path), "no records"


LOADERS = {"finetune-config": _validate_finetune_config, "nano-recipe": _validate_nano_recipe,
           "records": _validate_records, "distill-config": _validate_distill_config}


def _venv_bin() -> Path:
    venv = ROOT / ".venv" / "bin"
    return venv if (venv / "python").exists() else Path(sys.executable).parent


def _seed(folder: Path) -> None:
    """What a user brings, in each document's folder before its first block: a small VQA set
    (coloured shapes, domainvlm.nano.shapes_world) as train.jsonl / val.jsonl / test.jsonl with its
    images/, and scan.png, an image to ask about."""
    from domainvlm.nano.shapes_world import write_shapes_dataset

    paths = write_shapes_dataset(folder, n_images=6, seed=0, eval_fraction=0.34)
    rows = paths["eval"].read_text().splitlines()
    (folder / "val.jsonl").write_text("\n".join(rows[:6]) + "\n")
    (folder / "test.jsonl").write_text("\n".join(rows[-6:]) + "\n")
    paths["eval"].unlink()
    shutil.copy(folder / "images" / "scene_00000.png", folder / "scan.png")


class DocRun:
    """One document's folder and environment; runs its blocks in order, each once, with its
    warm `domainvlm` server running (`stop` ends it; the next block starts it again)."""

    def __init__(self, doc: str, folder: Path, models: dict[str, Path], cache: Path,
                 warm: Path):
        self.blocks = [b for b in _blocks() if b.doc == doc]
        self.folder = folder
        self.results: dict[int, Outcome] = {}
        (folder / "home").mkdir(parents=True)
        _seed(folder)
        self.table = [(rf"(?<![\w/.-]){re.escape(id_)}(?![\w/.-])", str(models[id_]))
                      for id_ in (*HUB_MODELS, *HUB_DETECTORS)]
        self.table += SMALLER
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOMAINVLM_")}
        path = os.pathsep.join((str(warm), str(_venv_bin()), env.get("PATH", "")))
        self.env = {**env, "PATH": path, "HOME": str(folder / "home"), "HF_HUB_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false", "DOMAINVLM_CACHE": str(cache)}
        self.warm = warm
        self.server: subprocess.Popen | None = None

    def outcome(self, line: int) -> Outcome:
        for block in self.blocks:
            if block.line > line:
                break
            if block.line not in self.results and not block.skip:
                if self.server is None:
                    self.server = start_server(self.warm, self.env, self.folder,
                                               _venv_bin() / "python", PRELOAD)
                text = substitute(block.text, self.table)
                self.results[block.line] = run_block(block, text, self.folder, self.env,
                                                     str(self.warm / "warm-python"), LOADERS)
        return self.results[line]

    def stop(self) -> None:
        if self.server is not None:
            stop_server(self.server)
            self.server = None


@pytest.fixture(scope="module")
def doc_runs(tmp_path_factory: pytest.TempPathFactory):
    from domainvlm.detection.tiny import build_tiny_detector
    from domainvlm.tiny import build_tiny_model

    models_root = tmp_path_factory.mktemp("hub")
    models = {id_: build_tiny_model(family, models_root / family, seed=0)
              for id_, family in HUB_MODELS.items()}
    models |= {id_: build_tiny_detector(kind, models_root / kind)
               for id_, kind in HUB_DETECTORS.items()}
    cache = tmp_path_factory.mktemp("cache")
    runs: dict[str, DocRun] = {}

    def get(doc: str) -> DocRun:
        for other in runs:  # documents run one after another: one server holds memory
            if other != doc:
                runs[other].stop()
        if doc not in runs:
            folder = tmp_path_factory.mktemp(doc.replace("/", "-").replace(".md", ""))
            runs[doc] = DocRun(doc, folder, models, cache, tmp_path_factory.mktemp("warm"))
        return runs[doc]

    yield get
    for run in runs.values():
        run.stop()


RUN = [b for b in _blocks() if not b.skip]


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN, ids=[f"{b.name}-{b.lang}" for b in RUN])
def test_block_runs(block: Block, doc_runs) -> None:
    outcome = doc_runs(block.doc).outcome(block.line)
    assert outcome.ok, f"{block.name} ({block.lang}) failed:\n{block.text}\n--- {outcome.output}"


def test_skips_are_few_and_explained() -> None:
    skipped = [b for b in _blocks() if b.skip]
    counts = {doc: sum(b.doc == doc for b in skipped) for doc in DOCS}
    listing = "\n".join(f"  {b.name}: {b.skip}" for b in skipped)
    assert {d: n for d, n in counts.items() if n} == EXPECTED_SKIPS, (
        f"skipped blocks changed; update EXPECTED_SKIPS only if each is honest:\n{listing}")


def test_every_substitution_is_used() -> None:
    texts = [b.text for b in _blocks() if not b.skip]
    for pattern, _ in SMALLER:
        assert any(re.search(pattern, t) for t in texts), f"{pattern!r} matches no block"
    for hub_id in (*HUB_MODELS, *HUB_DETECTORS):
        assert any(hub_id in t for t in texts), f"{hub_id} is in no block that runs"


def _leaf_commands() -> set[str]:
    from domainvlm import cli

    def walk(command, path=()):
        subs = getattr(command, "commands", None)
        if not subs or getattr(command, "invoke_without_command", False):
            yield " ".join(path)  # a leaf, or a group that runs alone (`domainvlm serve`)
        if not subs:
            return
        for name, sub in subs.items():
            yield from walk(sub, (*path, name))

    return set(walk(typer.main.get_command(cli.app)))


def _cli_table() -> set[str]:
    """Commands the README's CLI table names: its first column, `domainvlm X`."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    cells = re.findall(r"^\| `domainvlm ([^`]+)`", section, re.M)
    # "ask --model M ..." -> "ask": the words before the first option or placeholder
    return {re.match(r"[a-z0-9][a-z0-9-]*(?: [a-z0-9][a-z0-9-]*)*", c)[0] for c in cells}


def test_cli_table_names_every_command() -> None:
    table, offered = _cli_table(), _leaf_commands()
    assert offered - table == set(), "commands missing from README's CLI table"
    assert table - offered == set(), "README's CLI table names commands the CLI lacks"


# --- the runner itself: a wrong command must fail its block -------------------------------

def _doc(tmp_path: Path, text: str) -> list[Block]:
    path = tmp_path / "doc.md"
    path.write_text(text)
    return read_blocks(path, "doc.md")


def _run(tmp_path: Path, block: Block) -> Outcome:
    env = {**os.environ, "PATH": f"{_venv_bin()}{os.pathsep}{os.environ['PATH']}"}
    return run_block(block, block.text, tmp_path, env, str(_venv_bin() / "python"), LOADERS)


def test_a_wrong_flag_fails_its_block(tmp_path: Path) -> None:
    good, bad = _doc(tmp_path, "```bash\ndomainvlm synth-data --output shapes --images 2\n```\n"
                               "```bash\ndomainvlm synth-data --outptu more --images 2\n"
                               "echo after\n```\n")
    assert _run(tmp_path, good).ok
    outcome = _run(tmp_path, bad)
    assert not outcome.ok and "No such option" in outcome.output
    assert "after" not in outcome.output.split("\n", 1)[1]  # the script stopped at the error


def test_blocks_of_a_document_share_exports_and_files(tmp_path: Path) -> None:
    blocks = _doc(tmp_path, "```bash\nexport WHERE=here\n```\n"
                            "<!-- docs-test: file=conf.txt -->\n```bash\nnot run\n```\n"
                            "```console\n$ test \"$WHERE\" = here && cat conf.txt\nnot run\n```\n")
    outcomes = [_run(tmp_path, block) for block in blocks]
    assert all(o.ok for o in outcomes), outcomes
    assert outcomes[2].output.endswith("not run\n")


def test_python_and_yaml_blocks_are_checked(tmp_path: Path) -> None:
    blocks = _doc(tmp_path, "```python\nraise SystemExit('broken')\n```\n"
                            "<!-- docs-test: loader=finetune-config -->\n```yaml\n"
                            "model: m\ndata: d.jsonl\noutput: o\nlora_r: 0\n```\n"
                            "```jsonl\n{\"image\": \"a.png\", \"question\": \"q\", "
                            "\"answer\": \"a\", \"answerable\": \"no\"}\n```\n")
    outcomes = [_run(tmp_path, block) for block in blocks]
    assert not any(o.ok for o in outcomes), outcomes
    assert "broken" in outcomes[0].output and "lora_r" in outcomes[1].output
    assert "answerable" in outcomes[2].output


@pytest.mark.parametrize("text, message", [
    ("<!-- docs-test: skip () -->\n```bash\nx\n```\n", "needs a reason"),
    ("<!-- docs-test: skip because -->\n```bash\nx\n```\n", "skip (reason)"),
    ("<!-- docs-test: later -->\n```bash\nx\n```\n", "unknown docs-test directive"),
    ("<!-- docs-test: skip (x) -->\n\n```bash\nx\n```\n", "line just before"),
    ("<!-- docs-test: skip (x) -->\ntext\n", "line just before"),
    ("```yaml\na: 1\n```\n", "needs `docs-test: loader=NAME`"),
    ("```\nplain\n```\n", "fence language '(none)'"),
    ("```ruby\nputs 1\n```\n", "fence language 'ruby'"),
    ("```bash\nx\n", "never closed"),
])
def test_directives_are_strict(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DocError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _doc(tmp_path, text)
