"""`domainvlm ros bag-detect` on real rosbag2 files (MCAP and sqlite3) written with rosbags:
the output holds every input message byte for byte and one Detection2DArray per image, equal
to the detector's answer on that image; bad inputs are one error line, exit code 2 and nothing
written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from testkit import run_cli

from domainvlm.detection.detector import Detector, load_detector
from domainvlm.detection.student import ScoringParams, StudentConfig, ViLDStudent
from domainvlm.detection.teacher import Teacher
from domainvlm.detection.tiny import build_tiny_detector
from domainvlm.nano.tabletop_world import render_scene
from domainvlm.ros import messages as m
from domainvlm.ros.conversions import detections_from_array, header_at
from domainvlm.ros.images import encode_compressed
from domainvlm.ros.typestore import ros_typestore

PROMPTS = ["red mug", "blue box", "tasse à café"]
RAW, COMPRESSED, OTHER = "/camera/image_raw", "/camera/image_raw/compressed", "/chatter"
DETECTIONS = "/grounded_detector/detections"
T0 = 1_700_000_000_000_000_000
SIZE = (96, 72)


@pytest.fixture(scope="module")
def detector_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny student: the tests check structure and stamps, not accuracy."""
    root = tmp_path_factory.mktemp("bag-detector")
    teacher = Teacher.load(build_tiny_detector("clip", root / "teacher"))
    torch.manual_seed(0)
    student = ViLDStudent(StudentConfig(embed_dim=teacher.dim, frame=SIZE, channels=(8, 8, 16, 16),
                                        fpn_channels=16, box_head_dim=32, proposals_test=20))
    Detector(student, teacher, base=("red mug",), scoring=ScoringParams()).save(root / "det")
    return root / "det"


@pytest.fixture(scope="module")
def detector(detector_folder):
    return load_detector(detector_folder)


def bgr_padded(image, header: m.Header) -> m.Image:
    """A bgr8 Image with 5 bytes of padding per row, laid out with numpy."""
    rows = np.asarray(image)[..., ::-1].reshape(image.height, -1)
    padded = np.concatenate([rows, np.full((image.height, 5), 77, np.uint8)], 1)
    return m.Image(header=header, height=image.height, width=image.width, encoding="bgr8",
                   step=padded.shape[1], data=padded.tobytes())


def write_bag(path: Path, storage: StoragePlugin):
    """A recording: 3 raw images (the 2nd truncated), 2 PNG CompressedImages and 3 strings,
    interleaved in time; header stamps lag the bag times by 5 ms, as a driver's do. Returns
    the images by (topic, bag time)."""
    ts = ros_typestore()
    images = {}
    with Writer(path, version=8, storage_plugin=storage) as writer:
        raw = writer.add_connection(RAW, "sensor_msgs/msg/Image", typestore=ts)
        compressed = writer.add_connection(COMPRESSED, "sensor_msgs/msg/CompressedImage",
                                           typestore=ts)
        other = writer.add_connection(OTHER, "std_msgs/msg/String", typestore=ts)
        for k in range(3):
            t = T0 + k * 100_000_000
            image = render_scene(k, size=SIZE)[0]
            header = header_at(t - 5_000_000, "camera_optical")
            msg = bgr_padded(image, header)
            if k == 1:
                msg.data = msg.data[:-7]
            else:
                images[RAW, t] = (image, header)
            writer.write(raw, t, msg.serialize())
            if k < 2:
                cimage = render_scene(10 + k, size=SIZE)[0]
                writer.write(compressed, t + 1, encode_compressed(cimage, header, "png")
                             .serialize())
                images[COMPRESSED, t + 1] = (cimage, header)
            text = ts.types["std_msgs/msg/String"](data=f"tf {k} ✓")
            writer.write(other, t + 2, ts.serialize_cdr(text, "std_msgs/msg/String"))
    return images


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("bags")
    return {name: (root / name, write_bag(root / name, plugin))
            for name, plugin in (("mcap", StoragePlugin.MCAP),
                                 ("sqlite3", StoragePlugin.SQLITE3))}


def read_all(path: Path) -> tuple[dict[str, tuple[str, str]], list[tuple[str, int, bytes]]]:
    """({topic: (type, stored definition)}, [(topic, bag time, bytes)] in bag order)."""
    with Reader(path) as reader:
        topics = {c.topic: (c.msgtype, c.msgdef.data) for c in reader.connections}
        rows = [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]
    return topics, rows


@pytest.mark.parametrize(("name", "topic", "storage"), [
    ("mcap", RAW, None), ("sqlite3", COMPRESSED, None), ("mcap", COMPRESSED, "sqlite3")])
def test_bag_detect_copies_the_bag_and_adds_one_detection_array_per_image(
        bags, detector_folder, detector, tmp_path, capsys, monkeypatch, name, topic,
        storage) -> None:
    source, images = bags[name]
    out = tmp_path / "out"
    extra = ["--storage", storage] if storage else []
    code, stdout, stderr = run_cli(
        capsys, monkeypatch, "ros", "bag-detect", source, out, "--topic", topic,
        *[arg for p in PROMPTS for arg in ("--prompt", p)], "--model", detector_folder,
        "--score-threshold", "0.0", *extra)
    in_topics, in_rows = read_all(source)
    malformed = topic == RAW  # the truncated raw frame
    assert code == (1 if malformed else 0), stderr
    wanted = {t: v for (tp, t), v in images.items() if tp == topic}
    assert f"{len(wanted)} images of {topic} -> " in stdout
    assert stdout.splitlines()[-1] == (f"wrote {out} ({storage or name}: {len(in_rows)} "
                                       f"messages copied, {len(wanted)} Detection2DArray added)")
    if malformed:
        assert "skipped image 2 at 1700000000100000000 ns: image 96x72 'bgr8': data is" in stderr
        assert "1 malformed image(s) skipped" in stderr
    written = storage or name
    assert [p.suffix for p in out.iterdir() if p.suffix in (".mcap", ".db3")] == [
        {"mcap": ".mcap", "sqlite3": ".db3"}[written]]

    out_topics, out_rows = read_all(out)
    assert {k: v for k, v in out_topics.items() if k != DETECTIONS} == in_topics
    assert out_topics[DETECTIONS][0] == "vision_msgs/msg/Detection2DArray"
    assert [row for row in out_rows if row[0] != DETECTIONS] == in_rows

    # Decode the detections with the definitions stored in the output bag itself.
    with AnyReader([out]) as reader:
        found = {t: reader.deserialize(raw, c.msgtype)
                 for c, t, raw in reader.messages() if c.topic == DETECTIONS}
    assert sorted(found) == sorted(wanted)
    for t, msg in found.items():
        image, header = wanted[t]
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (
            header.stamp.sec, header.stamp.nanosec, header.frame_id)
        assert all(d.header.stamp.nanosec == header.stamp.nanosec for d in msg.detections)
        expected = detector.detect(image, PROMPTS, score_threshold=0.0, nms_threshold=0.5)
        got = detections_from_array(msg)
        assert len(expected) > 0 and [g[0] for g in got] == expected.labels
        np.testing.assert_allclose([g[1] for g in got], expected.scores.numpy(), rtol=1e-5)
        np.testing.assert_allclose([g[2] for g in got], expected.boxes.numpy(), atol=1e-3)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def not_a_bag(tmp_path: Path) -> Path:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not a bag")
    return folder


def damaged_copy(bag: Path, copy: Path) -> Path:
    """The sqlite3 bag with its last KiB cut off: it opens, then fails part-way through."""
    shutil.copytree(bag, copy)
    db = next(copy.glob("*.db3"))
    db.write_bytes(db.read_bytes()[:-1024])
    return copy


@pytest.mark.parametrize(("case", "message"), [
    ("missing topic", "has no topic /nope; its topics: /camera/image_raw (sensor_msgs/msg/Image)"),
    ("other type", "topic /chatter holds std_msgs/msg/String, not sensor_msgs/msg/Image or "
     "sensor_msgs/msg/CompressedImage"),
    ("taken detections topic", "already has a topic /chatter; name another"),
    ("not a bag", "not a readable rosbag2"),
    ("damaged bag", "the bag is damaged and cannot be read to its end"),
    ("no such input", "no such bag"),
    ("blank prompt", "prompt 2 is blank"),
    ("output exists", "is not empty; choose a new or empty folder, or pass --overwrite"),
    ("output is a file", "is a file; name a folder"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(
        bags, detector_folder, tmp_path, capsys, monkeypatch, case, message) -> None:
    source = bags["sqlite3"][0]
    out = tmp_path / "out"
    args = {"missing topic": ["--topic", "/nope"], "other type": ["--topic", OTHER],
            "taken detections topic": ["--detections-topic", OTHER]}.get(case, [])
    prompts = ["--prompt", "red mug", "--prompt", " " if case == "blank prompt" else "box"]
    if case == "not a bag":
        source = not_a_bag(tmp_path)
    elif case == "damaged bag":
        source = damaged_copy(source, tmp_path / "damaged")
    elif case == "no such input":
        source = tmp_path / "absent"
    elif case == "output exists":
        out.mkdir()
        (out / "mine.txt").write_text("keep")
    elif case == "output is a file":
        out.write_text("keep")
    before = listing(tmp_path)
    code, stdout, stderr = run_cli(capsys, monkeypatch, "ros", "bag-detect", source, out,
                                   *prompts, "--model", detector_folder, *args)
    lines = stderr.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: ") and message in lines[-1], stderr
    assert stdout == "" and (len(lines) == 1 or case == "damaged bag")  # else refused up front
    assert listing(tmp_path) == before  # no bag, no hidden temp folder
    if case == "output exists":
        assert listing(out) == ["mine.txt"]


def test_overwrite_replaces_an_earlier_output_only(bags, detector_folder, tmp_path, capsys,
                                                   monkeypatch) -> None:
    source = bags["mcap"][0]
    out = tmp_path / "out"
    args = ["ros", "bag-detect", source, out, "--topic", COMPRESSED, "--prompt", "red mug",
            "--model", detector_folder, "--detections-topic", "/found"]
    assert run_cli(capsys, monkeypatch, *args)[0] == 0
    first = read_all(out)
    code, _, stderr = run_cli(capsys, monkeypatch, *args)
    assert code == 2 and "--overwrite" in stderr
    assert run_cli(capsys, monkeypatch, *args, "--overwrite")[0] == 0
    assert read_all(out) == first and "/found" in first[0]
    assert listing(tmp_path) == ["out"]
