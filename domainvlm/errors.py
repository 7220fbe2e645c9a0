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
