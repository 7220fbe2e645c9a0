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
