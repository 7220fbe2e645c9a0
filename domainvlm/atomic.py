"""Write a file or a whole folder, or nothing: build it beside its final place, then rename it in.

The one home of atomic writes. Readers see the old content or the new, never half of it, and a
failure leaves no temp file behind. Outputs get the permissions any other tool's outputs get:
files 0o666 less the user's umask, folders as `mkdir` makes them, also files that a library
wrote 0600 into a folder before it is published; a caller that writes a secret (a key file)
asks for `mode=0o600`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from domainvlm.errors import OutputExistsError

FILE_MODE = 0o666  # before the umask, as open() and every other tool create files


@contextlib.contextmanager
def atomic_file(path: Path | str, *, mode: int = FILE_MODE, replace: bool = True,
                sync: bool = False) -> Iterator[IO[bytes]]:
    """Yield a binary handle on a hidden temp file beside `path`; on success the temp file
    becomes `path` in one rename, on error it goes. For streaming writers (`torch.save`,
    pydicom's `save_as`), which take a handle.

    `mode` is the permission bits before the umask. With `replace=False` an existing `path` is
    never replaced, even one that appears meanwhile: FileExistsError. `sync` forces the bytes
    to disk before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = _create_temp(path, mode)
    try:
        with handle:
            yield handle
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)  # atomic, and fails if `path` exists
    finally:
        temp.unlink(missing_ok=True)


def _create_temp(path: Path, mode: int) -> tuple[IO[bytes], Path]:
    """A new hidden file beside `path`, opened for writing; unlike `tempfile.mkstemp` (always
    0o600) the kernel applies the umask to `mode`, as for any file a program creates."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            return os.fdopen(os.open(temp, flags, mode), "wb"), temp
        except FileExistsError:
            continue


def ordinary_modes(files: Iterable[Path]) -> None:
    """Give each of `files` the mode a plain `open()` gives it in its folder (0o666 less the
    umask). Some writers create theirs 0600 whatever the umask (safetensors 0.8 since its
    temp-file writes: safetensors#782), which leaves a saved model readable by its writer
    only."""
    plain: dict[Path, int] = {}
    for path in files:
        if path.is_symlink() or not path.is_file():
            continue
        if path.parent not in plain:
            handle, probe = _create_temp(path, FILE_MODE)
            handle.close()
            plain[path.parent] = stat.S_IMODE(probe.stat().st_mode)
            probe.unlink()
        if stat.S_IMODE(path.stat().st_mode) != plain[path.parent]:
            path.chmod(plain[path.parent])


def write_bytes(path: Path | str, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Replace `path` with `data` in one step."""
    with atomic_file(path, mode=mode) as handle:
        handle.write(data)


def write_text(path: Path | str, text: str, *, mode: int = FILE_MODE) -> None:
    """Replace `path` with `text` (UTF-8) in one step."""
    write_bytes(path, text.encode("utf-8"), mode=mode)


def write_json(path: Path | str, data: Any) -> None:
    """Replace `path` with `data` as indented JSON in one step."""
    write_text(path, json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def new_folder(final: Path) -> Iterator[Path]:
    """Yield a hidden sibling folder to fill; on success it becomes `final`, on error it goes.

    `final` must not exist or be an empty folder: a run never mixes its files with another's.
    """
    final = Path(final)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise OutputExistsError(f"{final}: already exists and is not an empty folder; "
                              "choose a new folder or delete it")
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
        ordinary_modes(partial.rglob("*"))
        if final.exists():
            final.rmdir()
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def temp_dir_for(final: Path) -> Path:
    return final.parent / f".tmp-{final.name}"


def publish(temp: Path, final: Path) -> None:
    """Move a finished temp folder into place, replacing an older folder of the same name."""
    ordinary_modes(temp.rglob("*"))
    if final.exists():
        old = final.parent / f".old-{final.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(temp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temp, final)
