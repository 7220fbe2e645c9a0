"""The one atomic writer: whole files or nothing, no temp file left, and the permissions any
other tool's outputs get (the umask's), except where a secret asks for 0600."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from domainvlm.atomic import atomic_file, new_folder, write_bytes, write_json, write_text


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(params=[0o022, 0o027, 0o077], ids=lambda m: f"umask-{m:03o}")
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def plain_modes(folder: Path) -> tuple[int, int]:
    """(file, folder) permission bits that plain `open()` and `mkdir` give under this umask:
    what any other tool's outputs get."""
    (folder / "plain-file").touch()
    (folder / "plain-dir").mkdir()
    return mode_of(folder / "plain-file"), mode_of(folder / "plain-dir")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_get_the_permissions_of_plain_files_and_folders(umask, tmp_path):
    file_mode, dir_mode = plain_modes(tmp_path)
    write_bytes(tmp_path / "a.bin", b"x")
    write_text(tmp_path / "b.txt", "x")
    write_json(tmp_path / "c.json", {"x": 1})
    with atomic_file(tmp_path / "d.pt") as handle:
        torch.save({"x": 1}, handle)
    with new_folder(tmp_path / "folder") as partial:
        write_text(partial / "inside.txt", "x")
    for name in ("a.bin", "b.txt", "c.json", "d.pt", "folder/inside.txt"):
        assert mode_of(tmp_path / name) == file_mode, name
    assert mode_of(tmp_path / "folder") == dir_mode


def test_a_library_file_written_0600_is_published_with_the_plain_mode(umask, tmp_path):
    """safetensors 0.8 writes its files 0600 whatever the umask: a model published by us must
    still be readable by those the umask lets read it."""
    from safetensors.torch import save_file

    file_mode, _ = plain_modes(tmp_path)
    with new_folder(tmp_path / "model") as partial:
        save_file({"w": torch.zeros(2)}, partial / "model.safetensors")
    assert mode_of(tmp_path / "model" / "model.safetensors") == file_mode


def test_a_secret_stays_private_whatever_the_umask(umask, tmp_path):
    write_text(tmp_path / "key", "secret", mode=0o600)
    assert mode_of(tmp_path / "key") == 0o600


def test_json_reads_back(tmp_path):
    write_json(tmp_path / "m.json", {"accuracy": 0.5, "n": [1, 2]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"accuracy": 0.5, "n": [1, 2]}


def test_a_failed_streaming_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "entry.pt"
    with atomic_file(path) as handle:
        torch.save([{"x": torch.arange(3)}], handle)
    with pytest.raises(Exception, match="pickle"), atomic_file(path) as handle:
        torch.save([{"x": torch.arange(5), "bad": lambda: None}], handle)
    assert files(tmp_path) == ["entry.pt"]
    assert torch.equal(torch.load(path, weights_only=True)[0]["x"], torch.arange(3))


def test_a_failed_rename_leaves_no_temp_file(tmp_path):
    target = tmp_path / "taken.pt"
    target.mkdir()  # a folder where the file should go: the final rename fails
    with pytest.raises(OSError):
        write_bytes(target, b"x")
    assert files(tmp_path) == ["taken.pt"]
    assert target.is_dir()


def test_without_replace_an_existing_file_is_kept(tmp_path):
    path = tmp_path / "key"
    path.write_text("old")
    with pytest.raises(FileExistsError), atomic_file(path, replace=False) as handle:
        handle.write(b"new")
    assert path.read_text() == "old"
    assert files(tmp_path) == ["key"]
