"""The node as its own process on DDS, this test as a second participant (a camera, a
detections listener and a parameter client): detections match the scenes' ground truth, follow
prompts changed while running, survive 1,000 malformed images, and Ctrl-C ends the node cleanly.

The tests run in file order against one node process (starting it costs ~10 s).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import psutil
import pytest
import torch
from torchvision.ops import box_iou

from domainvlm.nano.tabletop_world import render_scene, scene_seed
from domainvlm.ros import messages as msg
from domainvlm.ros.conversions import detections_from_array, header_at
from domainvlm.ros.images import encode_image
from domainvlm.ros.peer import RosPeer

CAMERA = "/e2e/camera/image_raw"
DETECTIONS = "/e2e/detections"
ANNOTATED = "/grounded_detector/annotated"
SCENES = [render_scene(scene_seed(2027, i)) for i in range(8)]
# The prompts: the scenes' most frequent categories (novel and base alike), two before the
# run-time change and two after.
_BY_COUNT = Counter(o.category for _, objects in SCENES for o in objects).most_common()
BEFORE = tuple(sorted(name for name, _ in _BY_COUNT[:2]))
AFTER = tuple(sorted(name for name, _ in _BY_COUNT[2:4]))


class NodeProcess:
    """`domainvlm ros run` in a child process; its stderr is drained into `lines`."""

    def __init__(self, *args: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "domainvlm.cli", "ros", "run", "--transport", "dds", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        self._ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if "Ctrl-C stops" in line:
                self._ready.set()

    def wait_ready(self, timeout: float = 120.0) -> None:
        if not self._ready.wait(timeout):
            raise AssertionError("node did not start:\n" + "\n".join(self.lines[-20:]))

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss


@pytest.fixture(scope="module")
def node():
    process = NodeProcess(*[a for p in BEFORE for a in ("--prompt", p)],
                          "--image-topic", CAMERA, "--detections-topic", DETECTIONS,
                          "--annotated")
    try:
        process.wait_ready()
        yield process
    finally:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


@pytest.fixture(scope="module")
def peer(node):
    camera = RosPeer(image_topic=CAMERA, detections_topic=DETECTIONS, annotated_topic=ANNOTATED)
    camera.wait_for_node()
    yield camera
    camera.close()


def _frame(index: int, stamp_ns: int) -> msg.Image:
    image, _ = SCENES[index]
    return encode_image(image, header_at(stamp_ns, "camera_optical"))


def _detections_for(peer: RosPeer, message: msg.Image, timeout: float = 30.0):
    """Publish, then wait for the Detection2DArray stamped like the image (best effort: a frame
    may be lost on the way, so it is sent again every few seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        peer.publish(message)
        resend = time.monotonic() + 5.0
        while time.monotonic() < min(resend, deadline):
            try:
                received = peer.detections.get(timeout=0.2)
            except queue.Empty:
                continue
            if received.message.header.stamp == message.header.stamp:
                return received.message
    raise AssertionError("no detections for the frame stamped "
                         f"{message.header.stamp} within {timeout:g} s")


def _matches(found, objects, prompts) -> tuple[int, int, int]:
    """(ground-truth objects of the prompts found with IoU >= 0.5 and the right label, such
    objects in all, confident detections that match an object of their label)."""
    truth = [o for o in objects if o.category in prompts]
    hits = 0
    for obj in truth:
        boxes = [box for label, _, box in found if label == obj.category]
        if boxes and box_iou(torch.tensor([obj.box]), torch.tensor(boxes)).max() >= 0.5:
            hits += 1
    confident = [(label, box) for label, score, box in found if score >= 0.5]
    right = sum(any(o.category == label and box_iou(torch.tensor([o.box]),
                                                     torch.tensor([box])).item() >= 0.5
                    for o in objects) for label, box in confident)
    return hits, len(truth), right - len(confident)


@pytest.fixture(scope="module")
def in_process():
    """The same detector called in this process: what the node must answer, to the digit."""
    from domainvlm.detection.detector import Detector, shipped_detector

    return Detector.load(shipped_detector())


def _check_against_truth(peer: RosPeer, in_process, prompts: tuple[str, ...],
                         first_stamp: int) -> None:
    """Every frame's detections equal the detector's own, and find the scenes' objects."""
    hits = total = wrong = 0
    for index in range(len(SCENES)):
        frame = _frame(index, first_stamp + index * 1_000_000)
        array = _detections_for(peer, frame)
        assert array.header.stamp == frame.header.stamp
        assert array.header.frame_id == "camera_optical"
        for detection in array.detections:
            assert detection.header.stamp == frame.header.stamp
        found = detections_from_array(array)
        own = in_process.detect(SCENES[index][0], list(prompts), score_threshold=0.3,
                                nms_threshold=0.5)
        assert found == [(label, pytest.approx(score, abs=1e-6), pytest.approx(box, abs=1e-3))
                         for label, score, box in zip(own.labels, own.scores.tolist(),
                                                      own.boxes.tolist(), strict=True)]
        h, t, w = _matches(found, SCENES[index][1], prompts)
        hits, total, wrong = hits + h, total + t, wrong - w
    assert total >= 4, "the scenes hold too few objects of these prompts to judge"
    # The shipped detector finds 10 of 10 and 4 of 6 of these scenes' objects in-process.
    assert hits / total >= 0.6, f"found {hits} of {total} objects named by {prompts}"
    assert wrong <= 1, f"{wrong} confident detections match no object of their label"


def test_detections_follow_the_ground_truth_and_the_image_header(node, peer, in_process):
    _check_against_truth(peer, in_process, BEFORE, first_stamp=10**18)
    annotated = peer.annotated.get(timeout=10).message
    assert (annotated.width, annotated.height, annotated.encoding) == (320, 240, "rgb8")


def test_prompts_changed_while_running_are_followed(node, peer, in_process):
    assert peer.set_parameters(prompts=list(AFTER)) == [(True, "")]
    assert peer.get_parameters("prompts", "backend") == [list(AFTER), "vild"]
    _check_against_truth(peer, in_process, AFTER, first_stamp=2 * 10**18)
    assert any(f"prompts now: {', '.join(AFTER)}" in line for line in node.lines)


@pytest.mark.parametrize(("values", "reason"), [
    ({"score_threshold": 2.0}, "between 0 and 1"),
    ({"prompts": []}, "prompts"),
    ({"backend": "owlv2"}, "read-only while the node runs"),
    ({"no_such": 1}, "no parameter 'no_such'"),
])
def test_a_refused_parameter_says_why_and_changes_nothing(node, peer, values, reason):
    before = peer.get_parameters("prompts", "score_threshold")
    [(ok, why)] = peer.set_parameters(**values)
    assert not ok and reason in why
    assert peer.get_parameters("prompts", "score_threshold") == before


def _malformed(i: int) -> msg.Image:
    """Five kinds of broken image, each a valid CDR message."""
    header = header_at(1_500_000_000 * 10**9 + i, "camera_optical")
    good_row = 320 * 3
    kinds = [
        dict(height=240, width=320, encoding="yuv_unheard_of", step=good_row,
             data=bytes(good_row * 240)),                                     # unknown encoding
        dict(height=240, width=320, encoding="rgb8", step=100, data=bytes(100 * 240)),  # step
        dict(height=240, width=320, encoding="rgb8", step=good_row, data=bytes(1000)),  # short
        dict(height=0, width=0, encoding="rgb8", step=0, data=b""),                     # empty
        dict(height=1_000_000, width=1_000_000, encoding="rgb8", step=3_000_000,
             data=bytes(64)),                                                 # absurd size
    ]
    return msg.Image(header=header, **kinds[i % len(kinds)])


def _latest_report(peer: RosPeer, until=lambda values: True, timeout: float = 15.0) -> tuple:
    """(status, {key: int or str}) of the newest /diagnostics report satisfying `until`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = peer.diagnostics.get(timeout=5).message.status[0]
        values = {kv.key: int(kv.value) if kv.value.isdigit() else kv.value
                  for kv in status.values}
        if peer.diagnostics.empty() and until(values):
            return status, values
    raise AssertionError(f"no diagnostics report as expected within {timeout:g} s: {values}")


def test_a_thousand_malformed_images_are_counted_logged_sparingly_and_survived(node, peer):
    time.sleep(1.5)  # quiet for a diagnostics period: the next report counts all before
    while not peer.diagnostics.empty():
        peer.diagnostics.get()
    _, before = _latest_report(peer)
    lines_before = len(node.lines)
    started = time.monotonic()
    for i in range(200):  # warm-up: whatever the first ones allocate once
        peer.publish(_malformed(i))
        time.sleep(0.002)
    time.sleep(1.0)
    rss_before = node.rss()
    for i in range(200, 1200):
        peer.publish(_malformed(i))
        time.sleep(0.002)
    time.sleep(1.0)
    growth = node.rss() - rss_before
    assert growth < 8 * 2**20, f"node memory grew {growth / 2**20:.1f} MiB over 1,000 messages"
    # One more once the 5-second log window has passed: its line counts the ones held back.
    time.sleep(max(0.0, started + 5.5 - time.monotonic()))
    peer.publish(_malformed(1200))
    status, after = _latest_report(
        peer, until=lambda v: v["received"] - before["received"] >= 1201)
    # Every one is accounted for: inspected and refused, or (newest frame wins) replaced by a
    # newer one before the node looked. The node is idle here, so it looks at nearly all.
    malformed = after["malformed"] - before["malformed"]
    assert after["received"] - before["received"] == 1201
    assert malformed + after["dropped"] - before["dropped"] == 1201
    assert malformed >= 0.95 * 1201, after
    assert status.level == msg.DiagnosticStatus.WARN
    logged = [line for line in node.lines[lines_before:] if "malformed" in line]
    elapsed = time.monotonic() - started
    assert 2 <= len(logged) <= elapsed / 5 + 2, logged  # one line per 5 s, not one per image
    assert "more like this" in logged[-1], logged
    # Still working: a good frame afterwards gets its detections.
    array = _detections_for(peer, _frame(0, 1_600_000_000 * 10**9))
    assert array.header.stamp == header_at(1_600_000_000 * 10**9, "").stamp


def test_ctrl_c_stops_the_node_cleanly(node):
    node.proc.send_signal(signal.SIGINT)
    assert node.proc.wait(timeout=20) == 0
    time.sleep(0.2)
    tail = "\n".join(node.lines[-5:])
    assert "stopped;" in tail and "Traceback" not in "\n".join(node.lines)
