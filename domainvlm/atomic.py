"""Write a whole folder or nothing: build it beside its final place, then rename it in."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from domainvlm.errors import OutputExistsError


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
        if final.exists():
            final.rmdir()
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one step: readers see the old file or the new one."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def temp_dir_for(final: Path) -> Path:
    return final.parent / f".tmp-{final.name}"


def publish(temp: Path, final: Path) -> None:
    """Move a finished temp folder into place, replacing an older folder of the same name."""
    if final.exists():
        old = final.parent / f".old-{final.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(temp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temp, final)
