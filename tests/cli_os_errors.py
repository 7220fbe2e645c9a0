"""Run CLI cases against operating-system errors; started by tests/test_cli_classes.py inside
`unshare --user --map-root-user --mount`, so its mounts vanish with it and touch nothing else.

Usage: cli_os_errors.py CASES.json FS_ROOT. CASES maps a name ("merge | full") to arguments
whose `{readonly}`, `{full}`, `{notdir}` and `{denied}` stand for: a read-only file system, a
full one, a path under a regular file, and a folder this process may not write (prepared by the
caller: owned by a user this namespace does not map). Writes results.json beside CASES: per
case the exit code, stderr, and what was left behind (hidden temp files anywhere; for commands
other than finetune and distill, whose run folders are their record, anything at all).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path


def prepare(root: Path) -> dict[str, Path]:
    places = {"readonly": root / "readonly", "full": root / "full", "notdir": root / "notdir",
              "denied": root / "denied"}
    for name in ("readonly", "full"):
        places[name].mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(places["full"])],
                   check=True)
    filler = places["full"] / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as handle:
        while True:
            handle.write(b"\0" * 4096)
            handle.flush()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(places["readonly"])],
                   check=True)
    subprocess.run(["mount", "-o", "remount,ro", str(places["readonly"])], check=True)
    return places


RUN_RECORDS = ("finetune", "distill")  # a run folder with checkpoints: resumable, kept


def left_behind(place: Path, command: str) -> list[str]:
    if not place.is_dir():
        return []
    found = [p for p in place.rglob("*") if p.name != "filler"
             and not (p.is_dir() and not any(p.iterdir()))]  # an empty folder holds nothing
    hidden = [p for p in found if p.name.startswith(".") and p.name != ".domainvlm-output.json"]
    return sorted(str(p.relative_to(place)) for p in (hidden if command in RUN_RECORDS else found))


def main() -> None:
    from domainvlm import cli

    spec, root = Path(sys.argv[1]), Path(sys.argv[2])
    places = prepare(root)
    results = {}
    for name, args in json.loads(spec.read_text()).items():
        command, kind = (part.strip() for part in name.split("|"))
        argv = [a.format(**{k: str(v) for k, v in places.items()}) for a in args]
        sys.argv = ["domainvlm", *argv]
        cli._DEBUG = False
        err, out = io.StringIO(), io.StringIO()
        code = None
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                cli.main()
            except SystemExit as done:
                code = done.code
        results[name] = {"code": code, "stderr": err.getvalue(),
                         "left_behind": left_behind(places[kind], command)}
        if kind == "full":  # the next case starts from a full disk again, not from leftovers
            for path in places[kind].iterdir():
                if path.name != "filler":
                    (shutil.rmtree if path.is_dir() else Path.unlink)(path)
    (spec.parent / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
