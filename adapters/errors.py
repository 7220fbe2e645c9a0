"""Errors of the adapter store: each is one line a person can act on (the CLI prints it and
exits non-zero; the REST service maps it to a 4xx problem)."""

from __future__ import annotations

from domainvlm.errors import DomainVLMError


class AdapterError(DomainVLMError, ValueError):
    """An adapter, its source or a store request is unusable; the message says why."""


class AdapterNotFound(AdapterError, LookupError):
    """No adapter under that name@version; the message lists what the store holds."""


class AdapterIntegrityError(AdapterError):
    """A stored file differs from its card (changed, missing or added): the message names the
    file, never its content."""


class AdapterExistsError(AdapterError, FileExistsError):
    """That name@version is already in the store with other content."""
