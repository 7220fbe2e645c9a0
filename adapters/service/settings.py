"""What `domainvlm serve` runs with: one validated object, from flags or Python."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from domainvlm.adapters.service.db import default_data_dir, default_url

MIB = 2**20


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServeSettings(BaseModel):
    """Every setting of the service. Sizes in bytes, times in ms."""

    model: str  # the base model: hub id or folder
    store: Path | None = None  # the adapter store; None: the base alone
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None  # None: SQLite serve.db in data_dir
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    project_key_file: Path | None = None  # de-identification key; studies need it
    pacs: dict[str, str] = Field(default_factory=dict)  # name -> DICOMweb root
    cors_origins: list[str] = Field(default_factory=list)  # empty: CORS off
    max_request_bytes: int = Field(512 * MIB, ge=1024)
    max_unzipped_bytes: int = Field(2048 * MIB, ge=1024)
    max_files: int = Field(5000, ge=1)
    rate_per_minute: int = Field(600, ge=1)  # per key and replica, unless the key says
    share_results: bool = False  # True: every key sees every study and answer
    max_batch: int = Field(8, ge=1)  # 1: batching off
    max_wait_ms: float = Field(5.0, ge=0)
    max_loaded: int | None = Field(8, ge=1)  # adapters in memory at once
    preload: list[str] = Field(default_factory=list)  # adapters loaded at start
    device: str | None = None
    dtype: str = "auto"
    max_new_tokens_limit: int = Field(256, ge=1)

    @field_validator("tls_key")
    @classmethod
    def _pair(cls, key: Path | None, info) -> Path | None:
        if (key is None) != (info.data.get("tls_cert") is None):
            raise ValueError("give both --tls-cert and --tls-key, or neither")
        return key

    @property
    def url_of_database(self) -> str:
        return self.database_url or default_url(self.data_dir)

    @property
    def studies_dir(self) -> Path:
        return self.data_dir / "studies"
