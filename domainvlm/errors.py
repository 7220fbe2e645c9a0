"""Errors a caller can act on: the CLI turns each into one line and a non-zero exit.

They subclass the built-in type they refine, so library users may catch either.
"""


class DomainVLMError(Exception):
    """Base of the errors that describe bad input rather than a bug."""


class ConfigError(DomainVLMError, ValueError):
    """A setting is out of range or unknown; the message names the flag or YAML key."""


class ModelLoadError(DomainVLMError, ValueError):
    """A model or processor cannot be loaded, or is not a vision-language model."""


class DataError(DomainVLMError, ValueError):
    """A data record is unusable; the message names the record (file and line)."""


class OutputExistsError(DomainVLMError, FileExistsError):
    """The output folder holds a different run that would be overwritten."""


class TrainingDivergedError(DomainVLMError, FloatingPointError):
    """The loss or gradient norm of a step was not finite; that step was not applied, the run
    stopped and its last checkpoint stands. The message names the step and the settings."""


class BaseMismatchError(ModelLoadError):
    """An adapter is opened on a base model other than the one it was trained on."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during fine-tuning, with what a resume needs to know (a KeyboardInterrupt still:
    code that stops on Ctrl-C keeps stopping)."""

    def __init__(self, step: int, total: int, checkpoint: object) -> None:
        self.step, self.total, self.checkpoint = step, total, checkpoint
        if checkpoint is None:
            where = ("no checkpoint was written yet, so a resumed run starts again from step 0 "
                     "(--save-every N keeps progress)")
        else:
            where = f"last checkpoint: {checkpoint} (a resumed run continues from there)"
        super().__init__(f"interrupted after step {step} of {total}; {where}")


_OS_ADVICE = {
    "EROFS": "the file system is read-only; write to another place",
    "ENOSPC": "the disk is full; free space or write to another disk",
    "EDQUOT": "the disk quota is used up; free space or write to another disk",
    "EACCES": "permission denied; check the permissions or use another path",
    "EPERM": "operation not permitted; check the permissions or use another path",
    "ENOTDIR": "a part of the path is a file where a folder belongs; fix the path",
    "EISDIR": "it is a folder where a file belongs; name a file",
    "ENOENT": "no such file or folder; check the path",
    "EEXIST": "it already exists; choose another path",
    "ENAMETOOLONG": "the name is too long; use a shorter path",
    "EMFILE": "too many open files; raise the limit (ulimit -n) or use fewer workers",
}


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error: the path, what happened and what to do."""
    import errno
    from pathlib import Path

    name = errno.errorcode.get(exc.errno or 0, "")
    if name == "EEXIST" and exc.filename and Path(exc.filename).is_file():
        name = "ENOTDIR"  # mkdir over a file: the path needs a folder there
    where = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    advice = _OS_ADVICE.get(name) or (exc.strerror or str(exc) or type(exc).__name__)
    code = f" [{name}]" if name else ""
    return f"{where}: {advice}{code}" if where else f"{advice}{code}"
