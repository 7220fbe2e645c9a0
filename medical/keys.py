"""The project key: the one secret behind every pseudonym, remapped UID and date shift.

Pseudonyms and UIDs are HMAC-SHA256 under the key (`domainvlm.medical.deid`). HMAC hides the
input only while the key is unknown: whoever guesses the key recomputes the pseudonym of any
PatientID they hold and so re-identifies the patient. So a key must be as hard to guess as a
random 128-bit number: `check_project_key` refuses well-known values and anything shorter than
`MIN_KEY_CHARS` characters, or with too few distinct characters, or one short piece repeated.
`write_key_file` (`domainvlm dicom keygen PATH`) makes one: 256 random bits, in a file only its
owner can read, written atomically and never over an existing file (a lost key changes every
pseudonym; an overwritten one loses the link to earlier data for good).

The synthetic demo cohort is the one exemption (`DeidConfig(synthetic_only=True)`, in the
Python API only): its key is published (`domainvlm.medical.demo.DEMO_KEY`), which is harmless
because its patients are made up, and `deidentify` then refuses every data set that the
phantom writer did not mark as synthetic (`is_synthetic`).
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

from domainvlm.atomic import atomic_file
from domainvlm.errors import ConfigError

MIN_KEY_CHARS = 32  # 32 random characters of base64 carry 192 bits
MIN_DISTINCT_CHARS = 10
KEY_FILE_ENV = "DOMAINVLM_PROJECT_KEY_FILE"
# Values seen in docs, examples and tutorials (ours too: the demo key, README's old example).
WELL_KNOWN = frozenset({
    "changeme", "password", "passw0rd", "secret", "s3cret", "test", "testing", "key",
    "projectkey", "secretkey", "mykey", "default", "example", "demo", "admin", "letmein",
    "qwerty", "123456", "12345678", "hunter2", "domainvlm", "domainvlmdemo",
    "correcthorsebatterystaple", "yoursecretkey", "yourprojectkey", "hmackey"})
_HOW = (f"use at least {MIN_KEY_CHARS} random characters: make a key with `domainvlm dicom "
        f"keygen KEYFILE` and pass --project-key-file KEYFILE (or set {KEY_FILE_ENV}); "
        "anyone who guesses the key can recompute pseudonyms and UIDs and re-identify patients")


def check_project_key(key: str, flag: str = "project_key") -> None:
    """Raise ConfigError (naming `flag`, never the key) unless `key` is hard to guess."""
    text = (key or "").strip()
    if not text:
        raise ConfigError(f"{flag} is empty; {_HOW}")
    reason = _weakness(text)
    if reason:
        raise ConfigError(f"{flag} {reason}; {_HOW}")


def _weakness(text: str) -> str | None:
    letters = re.sub(r"[^a-z0-9]", "", text.lower())
    unit = _repeated_unit(letters) or letters
    if letters in WELL_KNOWN or unit in WELL_KNOWN:
        return "is a well-known example value"
    if len(text) < MIN_KEY_CHARS:
        return f"is {len(text)} characters long, too short to be secret"
    if len(set(text)) < MIN_DISTINCT_CHARS:
        return f"has only {len(set(text))} distinct characters (a pattern, not random)"
    if _repeated_unit(text):
        return "repeats one short piece (a pattern, not random)"
    return None


def _repeated_unit(text: str) -> str | None:
    """The shortest piece that `text` is two or more copies of, else None."""
    for size in range(1, len(text) // 2 + 1):
        if len(text) % size == 0 and text[:size] * (len(text) // size) == text:
            return text[:size]
    return None


def generate_key() -> str:
    """A new key: 256 bits from the OS's random source, as 43 URL-safe characters."""
    return secrets.token_urlsafe(32)


def write_key_file(path: Path) -> Path:
    """Write a new key to `path`, mode 0600, atomically; never replaces an existing file.

    Example::

        from domainvlm.medical import write_key_file

        write_key_file("project.key")   # once per project; keep it secret and backed up
    """
    path = Path(path)
    if path.exists():
        raise ConfigError(f"{path} already exists; a key file is never overwritten (that would "
                          "change every pseudonym of the project): choose another path")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:  # a secret: readable by its owner only, whatever the umask lets other outputs be
        with atomic_file(path, mode=0o600, replace=False, sync=True) as handle:
            handle.write((generate_key() + "\n").encode("ascii"))
    except FileExistsError:  # it appeared meanwhile
        raise ConfigError(f"{path} already exists; a key file is never overwritten") from None
    return path


def read_key_file(path: Path, flag: str = "--project-key-file") -> str:
    """The key in `path` (surrounding whitespace dropped). ConfigError when the file is
    missing, empty, or readable by other users (on POSIX: `chmod 600` it).

    Example::

        from domainvlm.medical import DeidConfig, read_key_file

        config = DeidConfig(project_key=read_key_file("project.key"))
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot be read ({err.strerror or err}); make a key "
                          "file with `domainvlm dicom keygen PATH`") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{flag} {path}: other users can read it (mode "
                          f"{stat.S_IMODE(mode):o}); run `chmod 600 {path}`")
    if not text:
        raise ConfigError(f"{flag} {path}: the file is empty")
    return text


def resolve_project_key(key: str | None, key_file: Path | None) -> str:
    """The key from exactly one of --project-key / --project-key-file (or their env vars)."""
    if key and key_file:
        raise ConfigError("give --project-key or --project-key-file (or their environment "
                          "variables), not both")
    if key_file:
        return read_key_file(key_file)
    if key:
        return key
    raise ConfigError(f"no project key: make one with `domainvlm dicom keygen KEYFILE` and "
                      f"pass --project-key-file KEYFILE (or set {KEY_FILE_ENV}); "
                      "--project-key / DOMAINVLM_PROJECT_KEY also work")


# The mark `domainvlm.medical.cohort` writes on every synthetic patient.
SYNTHETIC_MARK = {"Manufacturer": "DOMAINVLM", "ManufacturerModelName": "PHANTOM CT"}


def is_synthetic(ds: Any) -> bool:
    """Whether `ds` carries the synthetic cohort's mark (real scanners write their own)."""
    return all(str(ds.get(k, "")).strip() == v for k, v in SYNTHETIC_MARK.items())
