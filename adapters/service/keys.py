"""API keys of the service: made here, shown once, kept only as a sha256 digest.

A key is "dvk_" + 32 random bytes (256 bits, from `secrets`). A fast hash is the right one for
such a key: slow password hashes (bcrypt, scrypt, argon2) exist to make guessing low-entropy
passwords expensive, and nobody can enumerate 2^256 keys, so sha256 loses nothing and keeps
every request's check in microseconds. The first 12 characters are kept in clear as an index
(random, so they say nothing of the rest); the digest is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from domainvlm.adapters.service.db import ApiKey, utcnow
from domainvlm.errors import ConfigError

PREFIX = "dvk_"
PREFIX_LENGTH = 12
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def add_key(session: Session, name: str, rate_per_minute: int | None = None) -> str:
    """Store a new key for `name` and commit; returns the key, the only time it is known."""
    if not NAME.fullmatch(name):
        raise ConfigError(f"key name {name!r}: use 1-100 letters, digits, '.', '_', '@' or '-', "
                          "starting with a letter or digit")
    if rate_per_minute is not None and rate_per_minute < 1:
        raise ConfigError(f"--rate must be a positive number of requests per minute, "
                          f"not {rate_per_minute}")
    if session.scalar(select(ApiKey).where(ApiKey.name == name)) is not None:
        raise ConfigError(f"an API key named {name!r} exists (revoke it, or pick another name)")
    key = new_key()
    session.add(ApiKey(name=name, prefix=key[:PREFIX_LENGTH], digest=digest(key),
                       rate_per_minute=rate_per_minute))
    session.commit()
    return key


def list_keys(session: Session) -> list[ApiKey]:
    """Every key, revoked ones included, by name."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.name)))


def revoke_key(session: Session, name: str) -> ApiKey:
    """Revoke the key `name` and commit (revoking twice keeps the first time)."""
    row = session.scalar(select(ApiKey).where(ApiKey.name == name))
    if row is None:
        raise ConfigError(f"no API key named {name!r} (see `domainvlm serve keys list`)")
    if row.revoked is None:
        row.revoked = utcnow()
        session.commit()
    return row


def find_key(session: Session, plaintext: str) -> ApiKey | None:
    """The live key whose digest matches `plaintext`, else None (unknown, wrong or revoked)."""
    if not plaintext.startswith(PREFIX) or len(plaintext) <= PREFIX_LENGTH:
        return None
    wanted = digest(plaintext)
    for row in session.scalars(select(ApiKey).where(ApiKey.prefix == plaintext[:PREFIX_LENGTH])):
        if hmac.compare_digest(row.digest, wanted) and row.revoked is None:
            return row
    return None
