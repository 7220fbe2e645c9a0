"""Adapter references: "name@version", or "name" for its latest version. Names and versions
become folder names in the store and in archives, so only a safe alphabet is accepted."""

from __future__ import annotations

import re

from domainvlm.adapters.errors import AdapterError

BASE = "base"  # the name requests use for the base model alone; no adapter may take it
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def check_name(value: str, what: str) -> None:
    """Refuse a name or version that is not 1-64 of [a-z0-9._-] starting with [a-z0-9]."""
    if not NAME.fullmatch(value or ""):
        raise AdapterError(f"{what} {value!r}: use 1-64 lower-case letters, digits, '.', '_' "
                           "or '-', starting with a letter or digit")
    if what == "name" and value == BASE:
        raise AdapterError(f"name {BASE!r} is reserved for the base model alone; choose another")


def parse_ref(ref: str) -> tuple[str, str | None]:
    """("name", "version") of "name@version"; ("name", None) of "name"."""
    name, at, version = ref.partition("@")
    check_name(name, "name")
    if not at:
        return name, None
    check_name(version, "version")
    return name, version


def version_key(version: str) -> list[tuple[int, int | str]]:
    """The order of versions: runs of digits compare as numbers, so "2" < "10" < "2026-12a"."""
    return [(0, int(run)) if run.isdigit() else (1, run)
            for run in re.findall(r"\d+|\D+", version)]
