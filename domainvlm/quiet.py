"""Normal output shows our progress bars and results, not other libraries' chatter.

transformers and peft print deprecation warnings meant for library authors and a bar for
every weight load; pydicom warns about data it repairs as it reads; the C decoders under it
(libjpeg, OpenJPEG inside GDCM) print what they think of a file's bytes straight to file
descriptor 2. A user of the CLI can act on none of it: a file that cannot be decoded still
ends in our one `error:` line. `--verbose` keeps all of it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Iterator

# A variable the user has set wins; worker processes we start inherit these.
_QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
    "DOMAINVLM_QUIET": "1",
}


def quiet_libraries() -> None:
    """Silence third-party deprecation warnings, pydicom's repair notes and weight-loading
    bars in this process and the processes it starts."""
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
    if "transformers" in sys.modules:  # imported already: its settings were read then
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()


def is_quiet() -> bool:
    """Whether this process (or the CLI that started it) runs without `--verbose`."""
    return os.environ.get("DOMAINVLM_QUIET") == "1"


def quiet_worker() -> None:
    """Initialiser of a worker process: as quiet as the process that started it (warning
    filters set in code do not travel to spawned processes)."""
    if is_quiet():
        quiet_libraries()


_lock = threading.Lock()
_depth = 0
_saved_fd: int | None = None


@contextlib.contextmanager
def native_stderr_hidden() -> Iterator[None]:
    """Drop what C code writes to fd 2 during the block, when quiet.

    fd 2 belongs to the whole process, so nested or concurrent blocks share one redirection
    (the first in saves it, the last out restores it); anything another thread writes to
    stderr meanwhile is dropped too, so keep the block to the native call.
    """
    global _depth, _saved_fd
    if not is_quiet():
        yield
        return
    with _lock:
        if _depth == 0:
            sys.stderr.flush()
            try:
                _saved_fd = os.dup(2)
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 2)
                os.close(null)
            except OSError:  # no fd 2 to redirect: nothing can be shown anyway
                _saved_fd = None
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved_fd is not None:
                os.dup2(_saved_fd, 2)
                os.close(_saved_fd)
                _saved_fd = None
