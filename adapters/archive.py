"""One tar file that carries adapters between stores (a backup, another site, an air-gapped
server): adapters.json (what it holds), then each adapter's card.json and files as
<name>/<version>/<file>. Reading one trusts nothing in it: only plain files under a
<name>/<version>/ of legal names are accepted, checked before anything is written, and then
unpacked with tarfile's "data" filter as a second guard."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path, PurePosixPath

from domainvlm.adapters.errors import AdapterError
from domainvlm.adapters.refs import check_name
from domainvlm.adapters.sources import CARD
from domainvlm.atomic import atomic_file, publish

MANIFEST = "adapters.json"
FORMAT = "domainvlm-adapters"


def write(path: Path, folders: dict[str, Path], *, replace: bool) -> None:
    """Write the adapters of `folders` (ref -> checked store folder) into the tar `path`, in
    one step (an existing `path` is replaced only with `replace`); the same adapters give the
    same bytes."""
    manifest = json.dumps({"format": FORMAT, "version": 1, "adapters": list(folders)},
                          indent=2).encode()
    with atomic_file(path, replace=replace) as handle, tarfile.open(fileobj=handle, mode="w",
                                                    format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_info(MANIFEST, len(manifest)), io.BytesIO(manifest))
        for ref, folder in folders.items():
            prefix = ref.replace("@", "/")
            card = json.loads((folder / CARD).read_text(encoding="utf-8"))
            for relative in [CARD, *sorted(card["files"])]:
                with (folder / relative).open("rb") as source:
                    size = (folder / relative).stat().st_size
                    tar.addfile(_info(f"{prefix}/{relative}", size), source)


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info


def unpack(path: Path, staging: Path) -> dict[str, Path]:
    """Check every member of the archive `path`, then unpack it into `staging` (created
    here, after the checks): ref -> its unpacked folder. Nothing is written when a member is
    refused."""
    try:
        tar = tarfile.open(path, mode="r:*")  # noqa: SIM115 (closed by the `with` below)
    except tarfile.ReadError:
        raise AdapterError(f"{path}: not a tar archive; make one with "
                           "`domainvlm adapters export`") from None
    with tar:
        members = tar.getmembers()
        seen: set[str] = set()
        refs: dict[str, set[str]] = {}  # ref -> its files
        for member in members:
            parts = _check_member(path, member, staging, seen)
            if member.isfile() and parts != (MANIFEST,):
                check_name(parts[0], "name")
                check_name(parts[1], "version")
                refs.setdefault(f"{parts[0]}@{parts[1]}", set()).add("/".join(parts[2:]))
        listed = _manifest(path, tar)
        if sorted(listed) != sorted(refs) or any(CARD not in files for files in refs.values()):
            raise AdapterError(f"{path}: its contents do not match its {MANIFEST} (an archive "
                               "not written by `domainvlm adapters export`, or damaged)")
        staging.mkdir(parents=True)
        tar.extractall(staging, members=[m for m in members if m.isfile()], filter="data")
    return {ref: staging / ref.replace("@", "/") for ref in listed}


def _check_member(path: Path, member: tarfile.TarInfo, staging: Path,
                  seen: set[str]) -> tuple[str, ...]:
    """The parts of a member's name, or AdapterError: only plain files (and folders), with
    relative names that stay inside, each once; tarfile's data filter must agree."""
    name = member.name
    parts = PurePosixPath(name).parts
    segments = name.removesuffix("/").split("/") if member.isdir() else name.split("/")
    if name.startswith("/") or "\\" in name or any(s in ("", ".", "..") for s in segments):
        raise AdapterError(f"{path}: member {name!r} has an absolute or escaping path; "
                           "refused, nothing imported")
    if not (member.isfile() or member.isdir()):
        raise AdapterError(f"{path}: member {name!r} is a link or device, not a plain file; "
                           "refused, nothing imported")
    try:
        tarfile.data_filter(member, str(staging))
    except tarfile.FilterError as exc:
        raise AdapterError(f"{path}: member {name!r} is unsafe to unpack "
                           f"({type(exc).__name__}); refused, nothing imported") from None
    if member.isfile():
        if name in seen or (parts != (MANIFEST,) and len(parts) < 3):
            raise AdapterError(f"{path}: member {name!r} is repeated or outside a "
                               "<name>/<version>/ folder; refused, nothing imported")
        seen.add(name)
    return parts


def listed(path: Path) -> list[str]:
    """The refs an archive says it holds (its adapters.json)."""
    with tarfile.open(path, mode="r:*") as tar:
        return _manifest(path, tar)


def _manifest(path: Path, tar: tarfile.TarFile) -> list[str]:
    try:
        handle = tar.extractfile(MANIFEST)
        data = json.loads(handle.read()) if handle else None
    except (KeyError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("format") != FORMAT or \
            not isinstance(data.get("adapters"), list):
        raise AdapterError(f"{path}: not an adapter archive (no valid {MANIFEST}); make one "
                           "with `domainvlm adapters export`")
    return [str(ref) for ref in data["adapters"]]


def publish_folder(temp: Path, final: Path) -> None:
    """Move a checked, unpacked adapter folder into its place in the store (replacing one)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    publish(temp, final)
