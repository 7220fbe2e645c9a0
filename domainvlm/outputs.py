"""Where a command may write: never over what it reads, never over what it did not make.

Every command that writes a folder claims it here first. An existing folder is taken only when
it is empty, or, with `--overwrite`, when it holds an earlier output of the same command (a
marker file says so) and none of the command's own inputs; a file output is replaced only
with `--overwrite` and never when it is one of the inputs. Refusals are `OutputExistsError`s
that say why and what to do, raised before any work.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from domainvlm.atomic import publish, temp_dir_for
from domainvlm.errors import OutputExistsError

MARKER = ".domainvlm-output.json"  # {"command": ...}: this folder was written by domainvlm


def check_folder(output: Path, command: str, *, inputs: Iterable[str | Path] = (),
                 overwrite: bool = False,
                 made_by_us: Callable[[Path], bool] | None = None) -> None:
    """Raise unless `command` may write the folder `output` (see the module docstring).

    `made_by_us(output)` recognises outputs written before the marker existed."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"output {output} is a file; name a folder (new or empty)")
    refuse_inputs_inside(output, command, inputs)
    if not output.is_dir() or not any(output.iterdir()):
        return
    if not overwrite:
        raise OutputExistsError(
            f"output folder {output} is not empty; choose a new or empty folder, or pass "
            f"--overwrite to replace an earlier `{command}` output there")
    if written_by(output) != command and not (made_by_us and made_by_us(output)):
        raise OutputExistsError(
            f"output folder {output} holds files that `domainvlm {command}` did not write; "
            "--overwrite only replaces its own earlier output and never deletes anything "
            "else: choose another folder, or empty this one yourself")


def claim_folder(output: Path, command: str, *, overwrite: bool = False) -> Path:
    """Make `output` this command's (after `check_folder`): an earlier output of it goes."""
    output = Path(output)
    if overwrite and output.is_dir() and any(output.iterdir()):
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    mark(output, command)
    return output


def mark(folder: Path, command: str) -> None:
    """Write the marker that lets a later `--overwrite` recognise this folder as ours."""
    (Path(folder) / MARKER).write_text(json.dumps({"command": command}) + "\n",
                                       encoding="utf-8")


def written_by(folder: Path) -> str | None:
    """The command whose marker `folder` holds, or None."""
    try:
        return json.loads((Path(folder) / MARKER).read_text(encoding="utf-8")).get("command")
    except (OSError, ValueError, AttributeError):
        return None


def check_file(output: Path, *, inputs: Iterable[str | Path] = (),
               overwrite: bool = False) -> None:
    """Raise unless a file may be written at `output`: new, or replaced with --overwrite,
    and never one of the command's inputs."""
    output = Path(output)
    if output.is_dir():
        raise OutputExistsError(f"output {output} is a folder; name a file")
    if any(output.resolve() == Path(item).resolve() for item in inputs):
        raise OutputExistsError(f"output {output} is this command's input; name a new file")
    if output.exists() and not overwrite:
        raise OutputExistsError(f"output {output} already exists; pass --overwrite to replace "
                                "it, or name a new file")


def refuse_inputs_inside(output: Path, command: str,
                         inputs: Iterable[str | Path | None]) -> None:
    """Raise if one of `inputs` (paths; hub ids and None are passed over) is `output` or lies
    inside it."""
    target = output.resolve()
    for item in inputs:
        if item is None or (isinstance(item, str) and not item):
            continue
        path = Path(item).expanduser()
        if not path.exists():
            continue  # a hub id, or a missing input reported by the command itself
        resolved = path.resolve()
        if resolved == target or resolved.is_relative_to(target):
            raise OutputExistsError(
                f"output folder {output} holds this command's input {item}; writing there "
                f"could replace it: choose another output folder for `{command}`")


@contextlib.contextmanager
def new_output(output: Path, command: str, *, inputs: Iterable[str | Path] = (),
               overwrite: bool = False,
               made_by_us: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Check `output` (see `check_folder`), then yield a hidden sibling folder to fill; on
    success it is marked and replaces `output` in one rename, on error it goes and `output`
    (an earlier output, with --overwrite) is left as it was."""
    output = Path(output)
    check_folder(output, command, inputs=inputs, overwrite=overwrite, made_by_us=made_by_us)
    temp = temp_dir_for(output)
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    try:
        yield temp
        mark(temp, command)
        publish(temp, output)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
