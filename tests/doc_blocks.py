"""Fenced code blocks of the Markdown docs, and how each one is run (tests/test_docs.py).

A block is run by its language: `bash` / `sh` as a script under `set -euo pipefail`, `console`
as its `$ ` lines, `python` with the project's interpreter, `yaml` by the loader it is meant for
and `jsonl` by the record reader. `text` blocks (diagrams, folder trees) are not code.

An HTML comment on the line just before a fence tells the runner more:

    <!-- docs-test: skip (needs a CUDA GPU) -->      not run; the reason is required
    <!-- docs-test: file=run.yaml loader=finetune-config -->

`file=NAME` writes the block to NAME in the document's folder (a YAML config, a JSONL file, a
script a later block runs) instead of running it; YAML and JSONL blocks are still checked by
their loader. Every YAML block names its loader.
"""

from __future__ import annotations

import re
import resource
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

RUNNABLE = ("bash", "sh", "console", "python", "yaml", "jsonl")
NOT_CODE = ("text",)
_FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)\s*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:(?P<body>.*?)-->\s*$")
_SKIP = re.compile(r"^skip\s*\((?P<reason>.*)\)$")
_OPTION = re.compile(r"^(?P<key>file|loader)=(?P<value>\S+)$")


class DocError(ValueError):
    """A Markdown file the runner cannot read as the rules above say."""


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository, e.g. "docs/medical.md"
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    skip: str | None = None  # the reason, when skipped
    options: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.doc}:{self.line}"


def parse_directive(body: str, where: str) -> tuple[str | None, dict[str, str]]:
    """(skip reason or None, options) of one `docs-test:` comment."""
    body = body.strip()
    skip = _SKIP.match(body)
    if skip:
        reason = skip["reason"].strip()
        if not reason:
            raise DocError(f"{where}: `docs-test: skip` needs a reason in parentheses")
        return reason, {}
    if body.startswith("skip"):
        raise DocError(f"{where}: write `docs-test: skip (reason)`, got {body!r}")
    options = {}
    for word in body.split():
        option = _OPTION.match(word)
        if not option:
            raise DocError(f"{where}: unknown docs-test directive {word!r}; use skip (reason), "
                           "file=NAME or loader=NAME")
        options[option["key"]] = option["value"]
    if not options:
        raise DocError(f"{where}: empty docs-test directive")
    return None, options


def read_blocks(path: Path, doc: str) -> list[Block]:
    """Every fenced block of one Markdown file, with the directive just before it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending: tuple[int, str] | None = None  # (line, body) of a directive awaiting its fence
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        directive = _DIRECTIVE.match(lines[i])
        if directive:
            if pending:
                raise DocError(f"{doc}:{pending[0]}: docs-test directive not followed by a fence")
            pending = (i + 1, directive["body"])
        elif fence:
            where = f"{doc}:{i + 1}"
            lang = fence["lang"].lower()
            end = next((j for j in range(i + 1, len(lines))
                        if lines[j].strip() == fence["fence"]), None)
            if end is None:
                raise DocError(f"{where}: fence never closed")
            if lang not in RUNNABLE + NOT_CODE:
                raise DocError(f"{where}: fence language {lang or '(none)'!r}: use one of "
                               f"{', '.join(RUNNABLE + NOT_CODE)}")
            skip, options = (None, {})
            if pending:
                if pending[0] != i:
                    raise DocError(f"{doc}:{pending[0]}: docs-test directive must be on the "
                                   "line just before its fence")
                skip, options = parse_directive(pending[1], where)
                pending = None
            if lang in NOT_CODE and (skip or options):
                raise DocError(f"{where}: a `text` block is not run; drop its directive")
            if lang == "yaml" and not skip and "loader" not in options:
                raise DocError(f"{where}: a yaml block needs `docs-test: loader=NAME`")
            if lang in RUNNABLE:
                blocks.append(Block(doc, i + 1, lang, "\n".join(lines[i + 1:end]) + "\n",
                                    skip, options))
            i = end
        elif pending and lines[i].strip():
            raise DocError(f"{doc}:{pending[0]}: docs-test directive must be on the line just "
                           "before its fence")
        i += 1
    if pending:
        raise DocError(f"{doc}:{pending[0]}: docs-test directive not followed by a fence")
    return blocks


def substitute(text: str, table: Iterable[tuple[str, str]]) -> str:
    for pattern, replacement in table:
        text = re.sub(pattern, replacement, text)
    return text


def console_commands(text: str) -> str:
    """The commands of a console block: its `$ ` lines (output lines are not checked)."""
    return "\n".join(line[2:] for line in text.splitlines() if line.startswith("$ ")) + "\n"


@dataclass
class Outcome:
    ok: bool
    output: str  # what the block printed (the tail), or why it failed


def run_block(block: Block, text: str, folder: Path, env: dict[str, str], python: str,
              loaders: dict[str, Callable[[Path], object]], timeout: int = 600) -> Outcome:
    """Run one block (its text already substituted) in `folder`.

    Shell blocks of one document share exported variables: each script starts from the
    variables the last one exported (`folder/.docs-env`), as one terminal session would.
    """
    target = folder / block.options["file"] if "file" in block.options else None
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    if block.lang in ("yaml", "jsonl"):
        path = target or folder / f".docs-block-{block.line}.{block.lang}"
        path.write_text(text, encoding="utf-8")
        loader = block.options.get("loader", "records" if block.lang == "jsonl" else "")
        if loader not in loaders:
            return Outcome(False, f"unknown loader {loader!r}; known: {', '.join(loaders)}")
        try:
            loaders[loader](path)
        except Exception as exc:  # noqa: BLE001 - any error of the loader fails the block
            return Outcome(False, f"{loader} refused it: {type(exc).__name__}: {exc}")
        return Outcome(True, f"{loader}: ok")
    if target is not None:
        return Outcome(True, f"written to {target.name}")
    if block.lang == "python":
        script = folder / f".docs-block-{block.line}.py"
        script.write_text(text, encoding="utf-8")
        command = [python, script.name]
    else:
        body = console_commands(text) if block.lang == "console" else text
        script = folder / f".docs-block-{block.line}.sh"
        script.write_text("set -euo pipefail\n"
                          "[ -f .docs-env ] && source .docs-env\n"
                          f"{body}\n"
                          "export -p > .docs-env\n", encoding="utf-8")
        command = ["bash", script.name]
    start, cpu = time.monotonic(), _children_cpu()
    try:
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return Outcome(False, f"still running after {timeout} s")
    output = (done.stdout + done.stderr)[-4000:]
    took = f"{time.monotonic() - start:.1f} s ({_children_cpu() - cpu:.1f} s CPU)"
    return Outcome(done.returncode == 0, f"exit {done.returncode} after {took}\n{output}")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
