"""Every CLI command against the classes of bad input a user can cause.

Each command is driven through the real `domainvlm.cli.main` with: an option value outside its
domain; an output that is a folder of the user's (with --overwrite where the command has it);
an output that holds the command's own input; and (tests/cli_os_errors.py, in a mount
namespace) a read-only file system, a full disk, a file where a folder belongs and a folder it
may not write. Each must end in exactly one `error:` line, exit 2, no traceback, and nothing
of the user's lost or half-written. A test fails when a command exists that this table misses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from testkit import run_cli as run

from domainvlm import cli

KEY = secrets.token_hex(32)
ROOT = Path(__file__).resolve().parents[1]


def leaf_commands() -> set[str]:
    """Every command path the installed CLI offers ("finetune", "dicom deid", ...)."""
    def walk(command, path=()):
        subs = getattr(command, "commands", None)
        if not subs or getattr(command, "invoke_without_command", False):
            yield " ".join(path)  # a group that runs when named alone (`demo`) is one too
        for name, sub in (subs or {}).items():
            yield from walk(sub, (*path, name))

    return set(walk(typer.main.get_command(cli.app)))


def assert_one_line(code: int, err: str, pattern: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    assert re.search(pattern, lines[0], re.IGNORECASE), err


@pytest.fixture(scope="module")
def world(tiny_models, shapes_data, tmp_path_factory) -> dict[str, Path]:
    """Inputs every command can take: a tiny model and an adapter of it, shapes data, a
    synthetic CT cohort with labels, a VQA-RAD-style file."""
    from domainvlm.medical.cohort import write_cohort
    from domainvlm.medical.cohort_questions import cohort_questions
    from domainvlm.train.config import build_config
    from domainvlm.train.loop import finetune

    root = tmp_path_factory.mktemp("cli-world")
    model = tiny_models("llava")
    adapter = finetune(build_config(dict(
        model=str(model), data=str(shapes_data["train"]), output=root / "run", max_steps=1,
        batch_size=4, cache_dir=root / "cache"))).adapter
    manifest = write_cohort(root / "cohort", 3, seed=1, shape=(4, 32, 32))
    labels = root / "cohort" / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in cohort_questions(manifest.patients)))
    rad = root / "rad.json"
    rad.write_text(json.dumps([{"image_name": f"synpic{i}.jpg", "question": "Is there a mass?",
                                "answer": "no", "answer_type": "CLOSED"} for i in range(4)]))
    from domainvlm.adapters.store import AdapterStore

    store = AdapterStore(root / "store")
    store.add(adapter, "shapes")
    archive = store.export(root / "adapters.tar")
    return {**detection_world(root / "detection"),
            "model": model, "adapter": adapter, "data": shapes_data["train"],
            "held_out": shapes_data["eval"],
            "cohort": root / "cohort", "series": root / "cohort" / "patient-0000",
            "labels": labels, "rad": rad, "cache": root / "cache", "store": store.root,
            "archive": archive}


def detection_world(root: Path) -> dict[str, Path]:
    """What the detection commands read: a tabletop scene, a tiny CLIP teacher, a random
    student of it, COCO data, and small distill and robot-demo recipes."""
    import torch
    import yaml

    from domainvlm.detection.demo import RECIPE
    from domainvlm.detection.detector import Detector
    from domainvlm.detection.student import ScoringParams, StudentConfig, ViLDStudent
    from domainvlm.detection.teacher import Teacher
    from domainvlm.detection.tiny import build_tiny_detector
    from domainvlm.nano.tabletop_world import render_scene, write_tabletop

    root.mkdir(parents=True)
    render_scene(3, size=(160, 120))[0].save(root / "scene.png")
    teacher_folder = build_tiny_detector("clip", root / "teacher")
    teacher = Teacher.load(teacher_folder)
    torch.manual_seed(0)
    small = {"channels": [8, 16, 16, 16], "fpn_channels": 16, "box_head_dim": 32,
             "proposals_train": 32, "proposals_test": 16, "frame": [160, 120]}
    student = ViLDStudent(StudentConfig.from_dict({**StudentConfig(teacher.dim).to_dict(),
                                                   **small, "embed_dim": teacher.dim}))
    Detector(student, teacher, base=("red mug",), scoring=ScoringParams()).save(root / "det")
    write_tabletop(root / "coco", images=4, size=(160, 120), labels="base")
    distill_recipe = root / "distill.yaml"
    distill_recipe.write_text(yaml.safe_dump({
        "train": str(root / "coco" / "instances.json"), "split": str(root / "coco" /
                                                                    "split.json"),
        "teacher": str(teacher_folder), "steps": 2, "batch_size": 2, "warmup_steps": 1,
        "distill_proposals": 2, "student": small}))
    demo = yaml.safe_load(RECIPE.read_text())
    demo["teacher"] = str(teacher_folder)
    demo["world"].update(size=[160, 120], train_images=4, validation_images=2, test_images=2)
    demo["distill"].update(steps=2, batch_size=2, distill_proposals=2)
    demo["evaluation"].update(teacher_images=1, gallery=1)
    robot_recipe = root / "robot.yaml"
    robot_recipe.write_text(yaml.safe_dump(demo))
    return {"scene": root / "scene.png", "detector": root / "det",
            "distill_recipe": distill_recipe, "robot_recipe": robot_recipe,
            "bag": camera_bag(root / "bag", root / "scene.png")}


def camera_bag(path: Path, image: Path) -> Path:
    """A rosbag2 (MCAP) of two frames on /camera/image_raw, for `ros bag-detect`."""
    from PIL import Image
    from rosbags.rosbag2 import StoragePlugin, Writer

    from domainvlm.ros.conversions import header_at
    from domainvlm.ros.images import encode_image
    from domainvlm.ros.typestore import ros_typestore

    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        camera = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image",
                                       typestore=ros_typestore())
        for t in (10**9, 2 * 10**9):
            writer.write(camera, t, encode_image(Image.open(image), header_at(t, "camera"))
                         .serialize())
    return path


# Command -> arguments that write OUTPUT (a folder; "{out}/file.out" for commands that write a
# file), and whether it has --overwrite.
WRITERS = {
    "finetune": (["finetune", "--model", "{model}", "--data", "{data}", "--output", "{out}",
                  "--max-steps", "1", "--cache-dir", "{cache}"], True),
    "eval": (["eval", "--model", "{adapter}", "--data", "{data}", "--output", "{out}"], True),
    "probe": (["probe", "--model", "{model}", "--train", "{data}", "--test", "{held_out}",
               "--output", "{out}/file.out"], True),
    "merge": (["merge", "--adapter", "{adapter}", "--output", "{out}"], True),
    "tiny-model": (["tiny-model", "--family", "llava", "--output", "{out}"], True),
    "synth-data": (["synth-data", "--output", "{out}", "--images", "4"], True),
    "demo": (["demo", "--output", "{out}", "--patients", "10", "--epochs", "0.1"], True),
    "demo robot": (["demo", "robot", "--output", "{out}", "--config", "{robot_recipe}"], True),
    "distill": (["distill", "--config", "{distill_recipe}", "--output", "{out}"], True),
    "detect": (["detect", "{scene}", "--model", "{detector}", "--prompt", "red mug",
                "-o", "{out}/file.out"], True),
    # An MCAP bag in, sqlite3 out: both storage libraries are exercised.
    "ros bag-detect": (["ros", "bag-detect", "{bag}", "{out}", "--model", "{detector}",
                        "--prompt", "red mug", "--storage", "sqlite3"], True),
    "dicom deid": (["dicom", "deid", "{cohort}", "{out}", "--project-key", KEY], False),
    "dicom synth": (["dicom", "synth", "{out}", "--patients", "1", "--slices", "4",
                     "--size", "32"], False),
    "dicom build-vqa": (["dicom", "build-vqa", "{cohort}", "{labels}", "{out}",
                         "--project-key", KEY], False),
    "dicom import-vqa": (["dicom", "import-vqa", "{rad}", "{out}"], False),
    "dicom render": (["dicom", "render", "{series}", "{out}/file.out"], True),
    "dicom keygen": (["dicom", "keygen", "{out}/file.out"], False),
    "adapters add": (["adapters", "add", "{adapter}", "chest", "--store", "{out}"], False),
    "adapters import": (["adapters", "import", "{archive}", "--store", "{out}"], True),
    "adapters export": (["adapters", "export", "{out}/file.out", "--store", "{store}"], True),
}
READERS = {"info", "nano path", "dicom info", "ask", "adapters list", "adapters show",
           "serve keys list"}
REMOVERS = {"adapters rm"}  # deletes what it is told: tests/adapters/test_store.py
# Rows in the service's database, not files (the key alone on stdout, for scripts):
# tests/serve/test_db.py checks what they write and print.
DATABASE_WRITERS = {"serve keys add", "serve keys revoke"}
# Run until stopped: tests/serve/ and tests/ros/ start them, bad input included, and stop them.
SERVICES = {"serve", "ros run"}
CACHE_WRITERS = {"nano pretrain", "nano clip"}  # writes only into domainvlm's own cache


def args_for(command: str, world: dict[str, Path], out: Path, overwrite: bool) -> list[str]:
    template, has_overwrite = WRITERS[command]
    args = [a.format(out=out, **{k: str(v) for k, v in world.items()}) for a in template]
    return [*args, "--overwrite"] if overwrite and has_overwrite else args


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_the_tables_cover_every_command():
    assert leaf_commands() == (set(WRITERS) | READERS | CACHE_WRITERS | REMOVERS | SERVICES
                               | DATABASE_WRITERS | set(c[0] for c in DOMAIN))


# What a command that writes prints last: where, and (optionally) what, e.g.
# "wrote runs/x/adapter" or "wrote scan.png (512x512)".
WROTE = re.compile(r"wrote (?P<path>.+?)(?: \([^()]*\))?")
SAID_ELSEWHERE = {"demo": "tests/medical/test_demo.py"}  # minutes to run: checked there
FAST = {"dicom build-vqa": ["--strategy", "slices", "--count", "1"]}  # later options win


@pytest.mark.parametrize("command",
                         sorted(leaf_commands() - READERS - REMOVERS - DATABASE_WRITERS
                                - SERVICES))
def test_every_command_that_writes_ends_by_saying_where(command, world, tmp_path, capsys,
                                                        monkeypatch, request):
    """A command not listed in READERS writes; its last line of output names what it wrote,
    which exists and lies in the output it was given (the nano model: in the cache)."""
    if command in SAID_ELSEWHERE:
        assert Path(ROOT / SAID_ELSEWHERE[command]).read_text().count('f"wrote {out}"') == 1
        return
    if command == "nano clip":  # the shipped tensors, assembled into the cache
        from domainvlm.nano.clip import nano_clip_path

        code, out, err = run(capsys, monkeypatch, "nano", "clip")
        assert code == 0, err
        assert out.splitlines()[-1] == f"nano CLIP: {nano_clip_path()}"
        assert (nano_clip_path() / "config.json").is_file()
        return
    if command in CACHE_WRITERS:  # the tiny recipe, which the fixture builds once a session
        from testkit import TINY_NANO_RECIPE

        built = request.getfixturevalue("tiny_nano")
        recipe = tmp_path / "recipe.json"
        recipe.write_text(json.dumps(dataclasses.asdict(TINY_NANO_RECIPE)))
        code, out, err = run(capsys, monkeypatch, *command.split(), "--recipe", recipe)
        assert code == 0, err
        assert out.splitlines()[-1] == f"nano model: {built}"
        return
    assert command in WRITERS, f"`{command}` is not in READERS, so it writes: list it in WRITERS"
    output = tmp_path / "out"
    code, out, err = run(capsys, monkeypatch, *args_for(command, world, output, False),
                         *FAST.get(command, []))
    assert code == 0, err
    said = WROTE.fullmatch(out.splitlines()[-1])
    assert said, out
    path = Path(said["path"])
    assert path.exists() and (path == output or output in path.parents), out


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_a_folder_of_the_users_is_never_replaced(command, world, tmp_path, capsys,
                                                 monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    (out / "file.out").write_text("the user's file")  # what a file-writing command targets
    before = snapshot(out)
    # --overwrite names one file for a file output (the user's explicit consent), but a whole
    # folder for a folder output: only our own earlier output may go.
    writes_file = any("{out}/" in a for a in WRITERS[command][0])
    code, _, err = run(capsys, monkeypatch,
                       *args_for(command, world, out, overwrite=not writes_file))
    assert_one_line(code, err, r"not empty|did not write|already exists|holds files")
    assert snapshot(out) == before


# Command -> how to put one of its inputs inside (or at) its output.
INPUT_INSIDE = {
    "finetune": lambda w, out: ["--data", _copy(w["data"], out)],
    "eval": lambda w, out: ["--data", _copy(w["data"], out)],
    "probe": lambda w, out: ["--output", w["data"]],
    "merge": lambda w, out: ["--output", w["adapter"].parent],
    "demo": lambda w, out: ["--model", _copy(w["model"], out)],
    "dicom render": lambda w, out: ["--overwrite"],  # below: the output is the input file
    "distill": lambda w, out: ["--config", _copy(w["distill_recipe"], out)],
    "demo robot": lambda w, out: ["--config", _copy(w["robot_recipe"], out)],
    "detect": lambda w, out: ["-o", w["scene"]],  # the drawing would replace its input
    "ros bag-detect": lambda w, out: [],  # below: the input bag lies in the output folder
}


def _copy(source: Path, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    return str(target)


@pytest.mark.parametrize("command", sorted(INPUT_INSIDE))
def test_overwrite_never_touches_the_commands_own_input(command, world, tmp_path, capsys,
                                                        monkeypatch):
    out = tmp_path / "out"
    args = args_for(command, world, out, overwrite=True)
    extra = INPUT_INSIDE[command](world, out)
    if command == "dicom render":  # render a single file onto itself
        single = Path(_copy(next(world["series"].glob("*.dcm")), tmp_path / "in"))
        args[args.index(str(world["series"]))] = str(single)
        args[args.index(f"{out}/file.out")] = str(single)
    if command == "ros bag-detect":
        args[args.index(str(world["bag"]))] = _copy(world["bag"], out)
    # A later option wins in typer: the extra arguments replace the defaults above.
    guarded = [p for p in (out, tmp_path / "in", world["adapter"].parent,
                           Path(world["data"])) if p.exists()]
    before = {str(p): snapshot(p) if p.is_dir() else p.read_bytes() for p in guarded}
    code, _, err = run(capsys, monkeypatch, *args, *extra)
    assert_one_line(code, err, r"input")
    after = {str(p): snapshot(p) if p.is_dir() else p.read_bytes() for p in guarded}
    assert after == before


# (command, arguments, what the one line must say): one value outside its domain at least.
DOMAIN = [
    ("finetune", ["--model", "{model}", "--data", "{data}", "--output", "{tmp}/o",
                  "--lora-r", "0"], r"`--lora-r`.*greater than 0"),
    ("eval", ["--model", "{model}", "--data", "{data}", "--output", "{tmp}/o",
              "--batch-size", "0"], r"--batch-size.*greater than or equal to 1"),
    ("probe", ["--model", "{model}", "--train", "{data}"], r"missing option '--test'"),
    ("merge", ["--adapter", "{data}", "--output", "{tmp}/o"], r"not an adapter folder"),
    ("tiny-model", ["--family", "gpt", "--output", "{tmp}/o"], r"'gpt' is not one of"),
    ("synth-data", ["--output", "{tmp}/o", "--images", "1"],
     r"--images.*greater than or equal to 2"),
    ("info", ["{tmp}/no-such-model"], r"does not exist"),
    ("ask", ["--model", "{model}", "--image", "{tmp}/no-such.png", "Is there a mass?"],
     r"image .*no-such\.png does not exist"),
    ("ask", ["--model", "{adapter}", "--image", "{data}", "--max-new-tokens", "0", "Q?"],
     r"--max-new-tokens.*greater than or equal to 1"),
    ("ask", ["--model", "{adapter}", "--image", "{series}", "--view", "count=0", "Q?"],
     r"view count must be at least 1"),
    ("demo", ["--output", "{tmp}/o", "--learning-rate", "0"],
     r"`--learning-rate` must be a finite number above 0"),
    ("demo", ["--output", "{tmp}/o", "--epochs", "inf"],
     r"`--epochs` must be a finite number above 0"),
    ("nano pretrain", ["--no-such-option"], r"no such option"),
    ("nano clip", ["--no-such-option"], r"no such option"),
    ("distill", ["--config", "{distill_recipe}", "--output", "{tmp}/o", "--resume"],
     r"holds no `domainvlm distill` checkpoint"),
    ("detect", ["{scene}", "--model", "{detector}", "--prompt", "red mug",
                "--score-threshold", "1.5"], r"--score-threshold.*less than or equal to 1"),
    ("detect", ["{scene}", "--model", "{detector}", "--prompt", "  "], r"prompt 1 is blank"),
    ("demo robot", ["--output", "{tmp}/o", "--steps", "0"], r"--steps.*greater than or equal"),
    ("ros run", ["--nms-threshold", "-0.1"], r"--nms-threshold.*greater than or equal to 0"),
    ("ros bag-detect", ["{bag}", "{tmp}/o", "--model", "{detector}", "--prompt", "red mug",
                        "--nms-threshold", "-0.1"], r"--nms-threshold.*greater than or equal"),
    ("ros bag-detect", ["{bag}", "{tmp}/o", "--model", "{detector}", "--prompt", "red mug",
                        "--topic", "/nope"], r"has no topic /nope; its topics: /camera/image_raw"),
    ("demo robot", ["--output", "{tmp}/o", "--split", "medium"], r"medium.*easy, hard"),
    ("nano path", ["extra"], r"unexpected extra argument"),
    ("dicom info", ["{tmp}/nothing"], r"no such file or folder"),
    ("dicom deid", ["{cohort}", "{tmp}/o"], r"no project key: make one with `domainvlm dicom"),
    ("dicom synth", ["{tmp}/o", "--patients", "0"],
     r"--patients.*greater than or equal to 1"),
    ("dicom build-vqa", ["{cohort}", "{labels}", "{tmp}/o", "--project-key", KEY,
                         "--split", "0.8,0.8,0.8"], r"sum to 1"),
    ("dicom build-vqa", ["{cohort}", "{labels}", "{tmp}/o", "--project-key", KEY,
                         "--strategy", "mip", "--plane", "diagonal"],
     r"plane must be one of axial, coronal, sagittal"),
    ("dicom import-vqa", ["{rad}", "{tmp}/o", "--split", "1,0,0.5"], r"sum to 1"),
    ("dicom render", ["{series}", "{tmp}/o.png", "--strategy", "spiral"],
     r"strategy must be one of"),
    ("adapters add", ["{adapter}", "Chest", "--store", "{tmp}/o"], r"name 'Chest': use 1-64"),
    ("adapters rm", ["shapes", "--store", "{store}"], r"name the version to remove"),
]


@pytest.mark.parametrize(("command", "args", "message"), DOMAIN,
                         ids=[f"{c} {' '.join(a[-2:])}" for c, a, _ in DOMAIN])
def test_option_values_outside_their_domain(command, args, message, world, tmp_path, capsys,
                                           monkeypatch):
    filled = [a.format(tmp=tmp_path, **{k: str(v) for k, v in world.items()}) for a in args]
    code, _, err = run(capsys, monkeypatch, *command.split(), *filled)
    assert_one_line(code, err, message)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.png").exists()


def test_os_errors_are_one_line_and_leave_nothing_behind(world, tmp_path):
    """Read-only file system, full disk, a file where a folder belongs, a folder we may not
    write: every writing command, in a private mount namespace (tests/cli_os_errors.py)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount file systems in a private namespace "
                    "(CI runs as root)")
    cases = {f"{command} | {kind}": args_for(command, world, Path(f"{{{kind}}}/out"),
                                             overwrite=False)
             for command in WRITERS for kind in ("readonly", "full", "notdir", "denied")}
    fs = tmp_path / "fs"
    (fs / "denied").mkdir(parents=True)
    os.chown(fs / "denied", 65534, 65534)  # a user the namespace does not map: no override
    (fs / "denied").chmod(0o555)
    (fs / "notdir").write_text("a file, where the command wants a folder")
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases))
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", sys.executable,
         str(ROOT / "tests" / "cli_os_errors.py"), str(spec), str(fs)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    words = {"readonly": r"read-only", "full": r"disk is full", "notdir": r"file where a folder",
             "denied": r"permission denied"}
    problems = []
    for name, result in results.items():
        kind = name.rsplit("| ", 1)[1]
        lines = [x for x in result["stderr"].splitlines() if x.startswith("error:")]
        if (result["code"] != 2 or len(lines) != 1 or "Traceback" in result["stderr"]
                or not re.search(words[kind], lines[0], re.IGNORECASE)
                or result["left_behind"]):
            problems.append(f"{name}: exit {result['code']}, left {result['left_behind']}, "
                            f"stderr {result['stderr'][-400:]!r}")
    assert not problems, "\n".join(problems)
