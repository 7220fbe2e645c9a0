"""The adapter store: trained adapters kept as name@version, each with a card that says what it
is (its base, its data, its metrics) and the sha256 of every file it holds.

The store is a folder of plain files a hospital can back up as it is:
ROOT/<name>/<version>/ holds the adapter's files as fine-tuning wrote them plus `card.json`.
Every folder appears whole or not at all (built beside its place, then renamed in), and
`path(ref)` checks every file against the card before anything loads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from domainvlm.adapters import archive, sources
from domainvlm.adapters.errors import (
    AdapterError,
    AdapterExistsError,
    AdapterIntegrityError,
    AdapterNotFound,
)
from domainvlm.adapters.refs import BASE, NAME, check_name, parse_ref, version_key
from domainvlm.atomic import new_folder, write_json
from domainvlm.data.views import recorded_views

__all__ = ["BASE", "AdapterCard", "AdapterStore", "default_root"]

CARD = sources.CARD
SHA256 = re.compile(r"[0-9a-f]{64}")
ENV = "DOMAINVLM_ADAPTER_STORE"


def default_root() -> Path:
    """$DOMAINVLM_ADAPTER_STORE, else $XDG_DATA_HOME/domainvlm/adapters (~/.local/share/...)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "domainvlm" / "adapters"


@dataclass(frozen=True)
class AdapterCard:
    """What a stored adapter is: where it came from, what it was checked on, what it holds."""

    name: str
    version: str
    base: dict  # domainvlm.base_identity.BaseIdentity as a dict
    data: dict | None  # {"fingerprint", "path", "records"} of the training data, if known
    metrics: dict | None  # metrics.json of `domainvlm eval`, if given
    created: str  # ISO 8601, UTC
    intended_use: str
    licence: str
    files: dict[str, str]  # relative path -> sha256, every file of the adapter
    size_bytes: int
    peft_type: str
    mixable: bool  # PEFT can answer it in one batch with other adapters (adapter_names)
    views: dict | None  # how its training images were rendered (domainvlm.data.views)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AdapterCard:
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data] if isinstance(data, dict) else names
        if missing:
            raise AdapterError(f"not an adapter card (lacks {', '.join(missing)})")
        check_name(data["name"], "name")
        check_name(data["version"], "version")
        files = data["files"]
        if not isinstance(files, dict) or not all(
                _inside(path) and isinstance(digest, str) and SHA256.fullmatch(digest)
                for path, digest in files.items()):
            raise AdapterError("not an adapter card (its files must be paths inside the adapter "
                               "folder, each with a sha256)")
        return cls(**{n: data[n] for n in names})


class AdapterStore:
    """Adapters as name@version under `root` (created on the first add)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def add(self, source: Path | str, name: str, *, version: str | None = None,
            intended_use: str = "", licence: str = "",
            metrics: Path | str | None = None) -> AdapterCard:
        """Keep the adapter of `source` (a finetune run folder or an adapter folder) as
        name@version (version: the next whole number unless given); `metrics`: the output
        folder (or metrics.json) of `domainvlm eval` on it."""
        check_name(name, "name")
        if version is not None:
            check_name(version, "version")
        self._check_root()
        folder, run = sources.open_source(Path(source))
        config = _read_json(folder / sources.ADAPTER_CONFIG)
        base, data = sources.base_of(folder), sources.data_of(run)
        measured, views = sources.metrics_of(metrics, folder), recorded_views(folder)
        mixable = sources.mixing_blocker(folder, config) is None
        version = version or self._next_version(name)
        final = self.root / name / version
        if final.exists():
            raise AdapterExistsError(f"{name}@{version} is already in the store {self.root}; "
                                     "give another --version, or remove it first")
        made = [p for p in (self.root, self.root / name) if not p.exists()]
        try:
            with new_folder(final) as partial:
                files = _copy_files(folder, partial)
                card = AdapterCard(
                    name=name, version=version, base=base, data=data, metrics=measured,
                    created=datetime.now(UTC).isoformat(timespec="seconds"),
                    intended_use=intended_use, licence=licence, files=files,
                    size_bytes=sum((partial / f).stat().st_size for f in files),
                    peft_type=str(config.get("peft_type")), mixable=mixable, views=views)
                write_json(partial / CARD, card.to_json())
        except BaseException:
            _remove_empty(made)  # a failed add leaves the store as it was
            raise
        return card

    def list(self) -> list[AdapterCard]:
        """Every stored adapter, by name, then version (numerically where both are numbers)."""
        return [self._read_card(folder) for name in self._names()
                for folder in self._versions(name)]

    def card(self, ref: str) -> AdapterCard:
        """The card of "name@version", or of the latest version of "name"."""
        return self._read_card(self._folder(ref))

    def path(self, ref: str, *, verify: bool = True) -> Path:
        """The adapter folder of `ref`; with `verify`, every file checked against its card
        (AdapterIntegrityError naming the first file that differs, is missing or was added)."""
        folder = self._folder(ref)
        if verify:
            check_files(folder, self._read_card(folder).files, f"adapter {ref}")
        return folder

    def remove(self, ref: str) -> AdapterCard:
        """Delete name@version (a bare name is refused: it would delete the latest unseen)."""
        name, version = parse_ref(ref)
        if version is None:
            versions = ", ".join(f"{name}@{v.name}" for v in self._versions(name))
            raise AdapterError(f"name the version to remove ({versions or f'{name}@VERSION'})")
        folder = self._folder(ref)
        card = self._read_card(folder)
        doomed = folder.parent / f".removing-{folder.name}-{secrets.token_hex(4)}"
        os.replace(folder, doomed)  # gone from the store in one step
        shutil.rmtree(doomed)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()  # the name's folder, once its last version is gone
        return card

    def export(self, archive_path: Path, refs: list[str] | None = None, *,
               overwrite: bool = False) -> Path:
        """Write `refs` (default: every adapter), checked, with their cards into one tar; an
        existing file is replaced only with `overwrite`."""
        archive_path = Path(archive_path)
        if archive_path.exists() and not overwrite:
            raise AdapterExistsError(f"{archive_path} already exists; pass --overwrite to "
                                     "replace it, or name another archive")
        if self.root.resolve() in archive_path.resolve().parents:
            raise AdapterError(f"{archive_path} is inside the store {self.root}; write the "
                               "archive elsewhere")
        chosen = [self.card(ref).ref for ref in refs] if refs else [c.ref for c in self.list()]
        if not chosen:
            raise AdapterError(f"the store {self.root} is empty; nothing to export")
        folders = {ref: self.path(ref) for ref in dict.fromkeys(chosen)}
        archive.write(archive_path, folders, replace=overwrite)
        return archive_path

    def import_archive(self, archive_path: Path, *,
                       overwrite: bool = False) -> list[AdapterCard]:
        """Add the adapters of an exported archive; every file is checked against its card
        before any is published. An existing name@version with the same content is left as
        it is (not returned); with other content it is refused unless `overwrite`. Returns
        the cards written."""
        self._check_root()
        made_root = not self.root.exists()
        staging = self.root / f".import-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            unpacked = archive.unpack(Path(archive_path), staging)
            cards = {}
            for ref, folder in unpacked.items():
                card = self._read_card(folder)
                if card.ref != ref:
                    raise AdapterIntegrityError(f"archive {archive_path}: the card in {ref}/ "
                                                f"is for {card.ref}")
                check_files(folder, card.files, f"adapter {ref} in archive {archive_path}")
                cards[ref] = card
            new = [ref for ref in cards if not self._same(ref, unpacked[ref])]
            clashes = [ref for ref in new if (self.root / ref.replace("@", "/")).exists()]
            if clashes and not overwrite:
                raise AdapterExistsError(
                    f"already in the store {self.root} with other content: "
                    f"{', '.join(clashes)}; pass --overwrite to replace them (nothing imported)")
            for ref in new:
                archive.publish_folder(unpacked[ref], self.root / ref.replace("@", "/"))
            return [cards[ref] for ref in new]
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if made_root:
                _remove_empty([self.root])  # a refused archive leaves no trace

    def _same(self, ref: str, folder: Path) -> bool:
        """Whether the store holds `ref` with exactly these card bytes and files."""
        mine = self.root / ref.replace("@", "/")
        if not (mine / CARD).is_file():
            return False
        if (mine / CARD).read_bytes() != (folder / CARD).read_bytes():
            return False
        try:
            check_files(mine, self._read_card(mine).files, f"adapter {ref}")
        except AdapterIntegrityError:
            return False
        return True

    def _check_root(self) -> None:
        """Refuse to write into a folder that holds anything but adapters: a store is an empty
        folder or one this class filled, so a mistyped --store never scatters adapters among a
        person's files."""
        if not self.root.is_dir():
            return
        foreign = sorted(p.name for p in self.root.iterdir()
                         if not (p.is_dir() and NAME.fullmatch(p.name))
                         and not p.name.startswith(".import-"))
        if foreign:
            raise AdapterError(f"{self.root} holds files that are not adapters ({foreign[0]}); "
                               "a store is an empty folder or an adapter store: choose "
                               "another --store")

    def _next_version(self, name: str) -> str:
        numbers = [int(v.name) for v in self._versions(name) if v.name.isdigit()]
        return str(max(numbers, default=0) + 1)

    def _names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME.fullmatch(p.name))

    def _versions(self, name: str) -> list[Path]:
        """The version folders of `name`, oldest first (half-written ones are hidden)."""
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = [p for p in folder.iterdir() if NAME.fullmatch(p.name) and (p / CARD).is_file()]
        return sorted(found, key=lambda p: version_key(p.name))

    def _folder(self, ref: str) -> Path:
        name, version = parse_ref(ref)
        versions = self._versions(name)
        if version is None:
            chosen = versions[-1] if versions else None
        else:
            chosen = self.root / name / version
        if chosen is None or not (chosen / CARD).is_file():
            refs = [f"{n}@{v.name}" for n in self._names() for v in self._versions(n)]
            held = (f"it holds {', '.join(refs[:20])}{' ...' if len(refs) > 20 else ''}"
                    if refs else "it is empty")
            raise AdapterNotFound(f"no adapter {ref} in the store {self.root}; {held}")
        return chosen

    def _read_card(self, folder: Path) -> AdapterCard:
        path = folder / CARD
        try:
            return AdapterCard.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, UnicodeDecodeError) as exc:  # AdapterError is a ValueError
            reason = str(exc) if isinstance(exc, AdapterError) else "not valid JSON"
            raise AdapterIntegrityError(f"{path}: {reason}") from None


def check_files(folder: Path, files: dict[str, str], what: str) -> None:
    """Every file of `folder` (but the card) is one of `files` with its sha256."""
    for relative, digest in sorted(files.items()):
        path = folder / relative
        if path.is_symlink() or not path.is_file():
            raise AdapterIntegrityError(f"{what}: file {relative} is missing or not a plain "
                                        "file")
        if sources.sha256_file(path) != digest:
            raise AdapterIntegrityError(f"{what}: file {relative} was changed since it was "
                                        "stored (its sha256 differs from the card's)")
    extra = sorted({p.as_posix() for p in sources.adapter_files(folder)} - set(files))
    if extra:
        raise AdapterIntegrityError(f"{what}: file {extra[0]} was added; it is not in the card")


def _inside(path: object) -> bool:
    """A relative path that stays inside its folder (and is not the card)."""
    return (isinstance(path, str) and path != CARD and not path.startswith("/")
            and "\\" not in path and all(p not in ("", ".", "..") for p in path.split("/")))


def _copy_files(source: Path, target: Path) -> dict[str, str]:
    """Copy every adapter file of `source` into `target`: relative path -> sha256 (of the
    copy: what the store holds is what its card describes)."""
    files = {}
    for relative in sources.adapter_files(source):
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relative, target / relative)
        files[relative.as_posix()] = sources.sha256_file(target / relative)
    return files


def _remove_empty(folders: list[Path]) -> None:
    """Remove those of `folders` (outermost first) that are empty, innermost first."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise AdapterError(f"{path}: not valid JSON") from None
