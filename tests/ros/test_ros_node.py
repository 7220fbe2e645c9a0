"""The node's behaviour without a process: latest frame wins, prompts embedded once per change,
parameters checked, compressed input, annotated output, rate-limited logs; and the plain-DDS
transport in this process with a peer participant (compressed images in)."""

from __future__ import annotations

import io
import threading
import time

import pytest
from PIL import Image

from domainvlm.detection.detector import Detector, shipped_detector
from domainvlm.detection.draw import draw_detections
from domainvlm.errors import ConfigError
from domainvlm.nano.tabletop_world import render_scene, scene_seed
from domainvlm.ros import messages as msg
from domainvlm.ros.conversions import detections_from_array, header_at
from domainvlm.ros.images import encode_compressed, encode_image
from domainvlm.ros.node import (
    GroundedDetectorCore,
    NodeParams,
    ParameterError,
    RateLimitedLog,
)

PROMPTS = ["red mug", "blue box", "metal can"]


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.load(shipped_detector())


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    return render_scene(scene_seed(77, 0))[0]


def _core(detector, **changes) -> tuple[GroundedDetectorCore, list[str]]:
    lines: list[str] = []
    core = GroundedDetectorCore(NodeParams(prompts=PROMPTS).updated(changes, running=False),
                                log=lines.append, detector=detector)
    core.load()
    return core, lines


def _expected(detector, image, prompts=PROMPTS):
    """The detector called directly: the oracle for what the node publishes."""
    found = detector.detect(image, prompts, score_threshold=0.3, nms_threshold=0.5)
    return [(label, pytest.approx(score, abs=1e-6), pytest.approx(box, abs=1e-3))
            for label, score, box in zip(found.labels, found.scores.tolist(),
                                         found.boxes.tolist(), strict=True)]


def test_only_the_newest_frame_is_processed_and_the_rest_are_counted(detector, scene):
    core, _ = _core(detector)
    for i in range(5):
        core.offer(encode_image(scene, header_at(1000 + i, "cam")))
    out = core.process_next(timeout=1)
    assert out.detections.header.stamp == header_at(1004, "cam").stamp
    assert core.process_next(timeout=0.05) is None  # nothing older is left to do
    assert (core.stats.received, core.stats.dropped, core.stats.processed,
            core.stats.stale) == (5, 4, 1, 0)


def test_detections_equal_the_detector_on_the_same_image(detector, scene):
    core, _ = _core(detector)
    core.offer(encode_image(scene, header_at(7, "cam")))
    out = core.process_next(timeout=1)
    assert detections_from_array(out.detections) == _expected(detector, scene)
    assert out.annotated is None


def test_compressed_input_and_annotated_output(detector, scene):
    core, _ = _core(detector, image_transport="compressed", publish_annotated=True)
    jpeg = encode_compressed(scene, header_at(9, "cam"), format="jpeg")
    core.offer(jpeg, "compressed")
    out = core.process_next(timeout=1)
    decoded = Image.open(io.BytesIO(jpeg.data)).convert("RGB")  # PIL: the independent decoder
    assert detections_from_array(out.detections) == _expected(detector, decoded)
    found = detector.detect(decoded, PROMPTS, score_threshold=0.3, nms_threshold=0.5)
    drawn = draw_detections(decoded, found)
    assert (out.annotated.width, out.annotated.height, out.annotated.encoding) == (
        320, 240, "rgb8")
    assert out.annotated.data == drawn.tobytes()
    assert out.annotated.header.stamp == jpeg.header.stamp


def test_prompts_are_embedded_once_per_change_not_per_frame(detector, scene):
    core, _ = _core(detector)
    passes = detector.text_passes
    for i in range(3):
        core.offer(encode_image(scene, header_at(i, "cam")))
        core.process_next(timeout=1)
    assert detector.text_passes == passes
    assert core.set_parameters({"prompts": ["green bottle", "wooden ball"]}) == (True, "")
    assert detector.text_passes == passes + 1  # at the change, before any frame
    for i in range(3):
        core.offer(encode_image(scene, header_at(10 + i, "cam")))
        out = core.process_next(timeout=1)
        assert {label for label, _, _ in detections_from_array(out.detections)} <= {
            "green bottle", "wooden ball"}
    assert detector.text_passes == passes + 1


@pytest.mark.parametrize(("changes", "reason"), [
    ({"prompts": []}, "prompts"),
    ({"prompts": ["mug", "mug"]}, "prompts"),
    ({"prompts": "red mug"}, "list of strings"),
    ({"score_threshold": 1.5}, "between 0 and 1"),
    ({"nms_threshold": "high"}, "number"),
    ({"publish_annotated": 1}, "true or false"),
    ({"device": "cuda"}, "read-only while the node runs"),
    ({"colour": "red"}, "no parameter 'colour'"),
])
def test_a_refused_change_says_why_and_keeps_the_old_values(detector, changes, reason):
    core, _ = _core(detector)
    before = core.params
    ok, why = core.set_parameters(changes)
    assert not ok and reason in why
    assert core.params == before


@pytest.mark.parametrize(("text", "error"), [
    ("grounded_detector:\n  ros__parameters:\n    backend: yolo\n", "backend is 'yolo'"),
    ("grounded_detector:\n  ros__parameters:\n    image_topic: camera\n", "absolute ROS topic"),
    ("other_node:\n  ros__parameters:\n    prompts: [a]\n", "no `grounded_detector"),
    ("grounded_detector: [unclosed\n", "not valid YAML"),
])
def test_a_bad_params_file_is_one_clear_error(tmp_path, text, error):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=error.replace("[", r"\[")):
        NodeParams.from_yaml(path)


def test_a_params_file_sets_what_it_names(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("/**:\n  ros__parameters:\n    prompts: [red mug]\n"
                    "    score_threshold: 1\n    input_qos: reliable\n")
    params = NodeParams.from_yaml(path)
    assert (params.prompts, params.score_threshold, params.input_qos) == (
        ["red mug"], 1.0, "reliable")
    assert params.nms_threshold == NodeParams().nms_threshold
    with pytest.raises(ParameterError, match="read-only"):
        params.updated({"input_qos": "sensor_data"})


def test_the_log_is_rate_limited_and_counts_what_it_held_back():
    lines: list[str] = []
    log = RateLimitedLog(lines.append, period=0.3)
    for _ in range(50):
        log("bad", "bad frame")
    log("other", "other problem")  # another kind has its own window
    time.sleep(0.35)
    log("bad", "bad frame")
    assert lines == ["bad frame", "other problem", "bad frame (49 more like this in the last "
                     "0.3 s)"]


def test_diagnostics_report_the_counts(detector, scene):
    core, _ = _core(detector)
    core.offer(encode_image(scene, header_at(1, "cam")))
    core.offer(msg.Image(header=header_at(2, "cam"), height=2, width=2, encoding="rgb8",
                         step=6, data=b"\x00" * 3))
    # A malformed image is refused on arrival: it does not displace the good frame waiting.
    assert core.process_next(timeout=1).detections.header.stamp == header_at(1, "").stamp
    core.offer(encode_image(scene, header_at(3, "cam")))
    core.process_next(timeout=1)
    report = core.diagnostics(header_at(5, ""))
    values = {kv.key: kv.value for kv in report.status[0].values}
    assert {k: values[k] for k in ("received", "processed", "dropped", "malformed", "stale")} == {
        "received": "3", "processed": "2", "dropped": "0", "malformed": "1", "stale": "0"}
    assert report.status[0].level == msg.DiagnosticStatus.WARN
    assert values["prompts"] == "; ".join(PROMPTS)
    again = core.diagnostics(header_at(6, ""))
    assert again.status[0].level == msg.DiagnosticStatus.OK  # nothing new since


def test_the_dds_transport_serves_a_peer_in_another_participant(detector, scene):
    """Compressed images in over DDS, detections and a parameter change back (both
    participants in this process; the process-separated run is test_ros_e2e)."""
    from domainvlm.ros.dds import DdsGroundedDetector
    from domainvlm.ros.peer import RosPeer

    core, _ = _core(detector, image_transport="compressed", image_topic="/inproc/camera",
                    detections_topic="/inproc/detections")
    node = DdsGroundedDetector(core)
    stop = threading.Event()
    worker = threading.Thread(target=node.spin, args=(stop,))
    worker.start()
    peer = RosPeer(image_topic="/inproc/camera", compressed=True,
                   detections_topic="/inproc/detections")
    try:
        peer.wait_for_node(timeout=20)
        jpeg = encode_compressed(scene, header_at(42, "cam"), format="jpeg")
        decoded = Image.open(io.BytesIO(jpeg.data)).convert("RGB")
        peer.publish(jpeg)
        array = peer.detections.get(timeout=20).message
        assert array.header.stamp == jpeg.header.stamp
        assert detections_from_array(array) == _expected(detector, decoded)
        assert peer.set_parameters(score_threshold=0.9) == [(True, "")]
        assert core.params.score_threshold == 0.9
        # A burst faster than the model: every frame is processed or counted as dropped,
        # including those DDS's keep-last-1 history replaced before the node looked.
        for i in range(20):
            jpeg.header = header_at(100 + i, "cam")
            peer.publish(jpeg)
        last = None
        while last is None or last.header.stamp != header_at(119, "").stamp:
            last = peer.detections.get(timeout=20).message
        stats = core.stats
        assert stats.received == 21 and stats.dropped > 0
        assert stats.processed + stats.dropped == 21 and stats.stale == 0
    finally:
        stop.set()
        worker.join()
        peer.close()
        node.close()


def test_the_node_joins_the_domain_ros_domain_id_names(detector, monkeypatch):
    """A peer in another ROS domain never sees the node; one in the node's domain does, even
    when its camera publishes with reliable QoS."""
    import os

    from domainvlm.ros.dds import DdsGroundedDetector
    from domainvlm.ros.peer import RosPeer

    core, _ = _core(detector, image_topic="/domain/camera", detections_topic="/domain/out")
    node = DdsGroundedDetector(core)  # in this session's domain (tests/conftest.py)
    try:
        here = int(os.environ["ROS_DOMAIN_ID"])
        monkeypatch.setenv("ROS_DOMAIN_ID", str(here % 100 + 101))
        elsewhere = RosPeer(image_topic="/domain/camera", detections_topic="/domain/out")
        with pytest.raises(TimeoutError, match="no grounded_detector node matched"):
            elsewhere.wait_for_node(timeout=2)
        monkeypatch.setenv("ROS_DOMAIN_ID", str(here))
        # A camera publishing reliably still matches the best-effort (sensor data) input.
        same = RosPeer(image_topic="/domain/camera", detections_topic="/domain/out",
                       image_qos="reliable")
        same.wait_for_node(timeout=20)
        elsewhere.close()
        same.close()
    finally:
        node.close()
