"""The grounded detector node without its transport: frames in, ROS messages out.

Both transports (rclpy in `rclpy_node.py`, plain DDS in `dds.py`) hand every received image to
`GroundedDetectorCore.offer` and publish what `process_next` returns, so the behaviour users
depend on lives here once:

- latest frame wins: an image still waiting when a newer one arrives is dropped and counted,
  so a slow model never works through a queue of stale frames;
- prompts are embedded when they change (parameter update), never per frame;
- a malformed image is counted and logged (rate-limited), and the node keeps going;
- diagnostics report fps, latency, dropped, malformed and stale counts.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import ClassVar

from domainvlm.errors import ConfigError

NODE_NAME = "grounded_detector"
BACKENDS = ("vild", "owlv2", "owlvit", "grounding-dino")
IMAGE_TRANSPORTS = ("raw", "compressed")
# The two QoS profiles a topic may use: name -> (reliable, history depth), durability volatile.
# Sensor data: best effort, keep last 1 (a late frame is worthless); reliable: keep last 10,
# what `ros2 topic echo` asks for by default. Both transports build theirs from this table.
QOS_PROFILES = {"sensor_data": (False, 1), "reliable": (True, 10)}


class ParameterError(ValueError):
    """A parameter value the node refuses; the message is the reason a ROS client sees."""


@dataclass
class NodeParams:
    """Every ROS parameter of the node, with its default (config/params.yaml mirrors these)."""

    prompts: list[str] = field(default_factory=lambda: ["red mug", "blue box", "green bottle"])
    score_threshold: float = 0.3
    nms_threshold: float = 0.5
    backend: str = "vild"  # vild (a distilled student) | owlv2 | owlvit | grounding-dino
    model: str = ""  # empty: the shipped robot detector; else a folder or hub id
    device: str = "cpu"
    image_topic: str = "/camera/image_raw"
    image_transport: str = "raw"  # raw | compressed (subscribes <image_topic>/compressed)
    detections_topic: str = "/grounded_detector/detections"
    publish_annotated: bool = False
    annotated_topic: str = "/grounded_detector/annotated"
    input_qos: str = "sensor_data"  # best effort, keep last 1 | reliable
    output_qos: str = "reliable"  # reliable, keep last 10 | sensor_data
    diagnostics_period: float = 1.0  # seconds between /diagnostics messages

    RUNTIME: ClassVar[frozenset[str]] = frozenset(
        {"prompts", "score_threshold", "nms_threshold", "publish_annotated"})

    def __post_init__(self) -> None:
        self.prompts = list(self.prompts)
        self.check()

    def check(self) -> None:
        """Refuse values the node cannot run with, one reason each (ParameterError)."""
        from domainvlm.detection.types import DetectionInputError, check_prompts

        try:
            check_prompts(self.prompts)
        except DetectionInputError as exc:
            raise ParameterError(f"prompts: {exc}") from None
        for name in ("score_threshold", "nms_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not 0.0 <= value <= 1.0:
                raise ParameterError(f"{name} must be a number between 0 and 1, not {value!r}")
        for name, allowed in (("backend", BACKENDS), ("image_transport", IMAGE_TRANSPORTS),
                              ("input_qos", QOS_PROFILES), ("output_qos", QOS_PROFILES)):
            if getattr(self, name) not in allowed:
                raise ParameterError(f"{name} is {getattr(self, name)!r}: one of "
                                     f"{', '.join(allowed)}")
        for name in ("image_topic", "detections_topic", "annotated_topic"):
            topic = getattr(self, name)
            if not isinstance(topic, str) or not topic.startswith("/") or topic.endswith("/") \
                    or "//" in topic or " " in topic:
                raise ParameterError(f"{name} is {topic!r}: an absolute ROS topic name such as "
                                     "/camera/image_raw")
        if not isinstance(self.diagnostics_period, int | float) or self.diagnostics_period <= 0:
            raise ParameterError(f"diagnostics_period must be a positive number of seconds, "
                                 f"not {self.diagnostics_period!r}")

    def updated(self, changes: dict[str, object], *, running: bool = True) -> NodeParams:
        """A copy with `changes` applied; while running only RUNTIME parameters may change."""
        names = {f.name for f in fields(self)}
        for name, value in changes.items():
            if name not in names:
                raise ParameterError(f"no parameter {name!r}; the node has "
                                     f"{', '.join(sorted(names))}")
            if running and name not in self.RUNTIME and value != getattr(self, name):
                raise ParameterError(f"{name} is read-only while the node runs (restart it to "
                                     f"change); {', '.join(sorted(self.RUNTIME))} change live")
        typed = {name: _typed(name, value, getattr(self, name)) for name, value in changes.items()}
        return replace(self, **typed)

    @classmethod
    def from_yaml(cls, path: Path | str) -> NodeParams:
        """Read a ROS 2 parameters file: `grounded_detector:` (or `/**:`) `ros__parameters:`."""
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        section = None
        if isinstance(data, dict):
            for key in (NODE_NAME, f"/{NODE_NAME}", "/**"):
                if isinstance(data.get(key), dict) and "ros__parameters" in data[key]:
                    section = data[key]["ros__parameters"]
                    break
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: no `{NODE_NAME}: ros__parameters:` section (see "
                              "config/params.yaml of the domainvlm_ros package)")
        try:
            return cls().updated(section, running=False)
        except ParameterError as exc:
            raise ConfigError(f"{path}: {exc}") from None


def _typed(name: str, value: object, current: object) -> object:
    """`value` as the parameter's type (ROS sends doubles as ints when written `1`)."""
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ParameterError(f"{name} must be true or false, not {value!r}")
        return value
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParameterError(f"{name} must be a number, not {value!r}")
        return float(value)
    if isinstance(current, list):
        if isinstance(value, str) or not isinstance(value, list | tuple) \
                or not all(isinstance(v, str) for v in value):
            raise ParameterError(f"{name} must be a list of strings, not {value!r}")
        return list(value)
    if not isinstance(value, str):
        raise ParameterError(f"{name} must be a string, not {value!r}")
    return value


def default_model() -> str:
    """The detector a node or bag run uses when none is named: the shipped robot detector."""
    from domainvlm.detection.detector import shipped_detector

    return str(shipped_detector())


class RateLimitedLog:
    """At most one line per kind of problem per `period` seconds, with a count of the rest,
    so a flood of bad messages cannot flood the log."""

    def __init__(self, log: Callable[[str], None], period: float = 5.0) -> None:
        self.log = log
        self.period = period
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -float("inf")) < self.period:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        skipped = self._suppressed.pop(kind, 0)
        self._last[kind] = now
        self.log(message + (f" ({skipped} more like this in the last {self.period:g} s)"
                            if skipped else ""))


@dataclass
class NodeStats:
    """Counters and recent timings the diagnostics report."""

    received: int = 0
    processed: int = 0
    dropped: int = 0  # replaced by a newer frame before the model got to them
    malformed: int = 0
    stale: int = 0  # processed while a newer frame had arrived: the policy keeps this at 0
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=256))  # receive -> output
    model_ms: deque = field(default_factory=lambda: deque(maxlen=256))
    done_at: deque = field(default_factory=lambda: deque(maxlen=64))  # monotonic seconds

    def fps(self) -> float:
        if len(self.done_at) < 2 or self.done_at[-1] == self.done_at[0]:
            return 0.0
        return (len(self.done_at) - 1) / (self.done_at[-1] - self.done_at[0])


def percentile(values, q: float) -> float:
    """The q-quantile (0..1) of `values` by nearest rank; 0 when there are none."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@dataclass
class _Frame:
    msg: object
    kind: str
    received_ns: int
    sequence: int


@dataclass
class Output:
    """What one processed frame publishes."""

    detections: object  # messages.Detection2DArray, header copied from the image
    annotated: object | None  # messages.Image with the boxes drawn, when asked for
    model_ms: float


def _stderr(line: str) -> None:
    print(f"[{NODE_NAME}] {line}", file=sys.stderr, flush=True)


class GroundedDetectorCore:
    """The node's behaviour; transports call `offer` from their callbacks and publish what
    `process_next` returns from one worker thread."""

    def __init__(self, params: NodeParams, *, log: Callable[[str], None] = _stderr,
                 detector=None) -> None:
        params.check()
        self.params = params
        self.log = log
        self.detector = detector
        self.stats = NodeStats()
        self._warn = RateLimitedLog(log)
        self._slot = threading.Condition()
        self._frame: _Frame | None = None
        self._received = 0
        self._model_lock = threading.Lock()  # a prompt change waits for the frame in flight
        self._malformed_reported = 0

    def load(self) -> None:
        """Open the detector and embed the prompts (a lifecycle node's configure step)."""
        if self.detector is None:
            from domainvlm.detection.detector import load_detector

            source = self.params.model or default_model()
            self.detector = load_detector(source, backend=self.params.backend,
                                          device=self.params.device)
        self._embed(self.params.prompts)
        from PIL import Image

        # The first call pays one-off allocations (~2 s on a CPU): pay them before any frame.
        self.detector.detect(Image.new("RGB", (320, 240), (128, 128, 128)), self.params.prompts)

    def _embed(self, prompts: list[str]) -> None:
        """Turn prompts into classifiers now, so frames after a change pay nothing."""
        embed = getattr(self.detector, "prompt_embeddings", None)
        if embed is not None:
            embed(prompts)

    def offer(self, msg, kind: str = "raw") -> None:
        """A frame arrived: it replaces any frame still waiting (dropped, counted). A raw image
        whose size, encoding or length is wrong is refused here, so it never displaces a good
        frame (a compressed one can only be judged by decoding it)."""
        from domainvlm.ros.images import MalformedImage, check_image

        with self._slot:
            self.stats.received += 1
        if kind == "raw":
            try:
                check_image(msg)
            except MalformedImage as exc:
                self.malformed(exc)
                return
        with self._slot:
            self._received += 1
            if self._frame is not None:
                self.stats.dropped += 1
            self._frame = _Frame(msg, kind, time.monotonic_ns(), self._received)
            self._slot.notify()

    def missed(self, count: int) -> None:
        """`count` frames arrived but a newer one replaced them in the transport's own queue
        (DDS keep-last history) before they were offered: received, and dropped."""
        if count:
            with self._slot:
                self.stats.received += count
                self.stats.dropped += count

    def process_next(self, timeout: float) -> Output | None:
        """Detect on the newest frame (waiting up to `timeout` s for one); None when there was
        none or it was malformed."""
        from domainvlm.ros.images import MalformedImage, decode_compressed, decode_image

        with self._slot:
            if self._frame is None and not self._slot.wait_for(lambda: self._frame is not None,
                                                               timeout):
                return None
            frame, self._frame = self._frame, None
            if frame.sequence != self._received:
                self.stats.stale += 1
        try:
            image = (decode_compressed if frame.kind == "compressed" else decode_image)(frame.msg)
        except MalformedImage as exc:
            self.malformed(exc)
            return None
        return self._detect(frame, image)

    def malformed(self, problem: Exception | str) -> None:
        """Count and log (rate-limited) an image that cannot be used; transports call it for
        messages they cannot even deserialise."""
        with self._slot:  # counted from the subscription and the worker thread
            self.stats.malformed += 1
        self._warn("malformed", f"skipped a malformed image on {self.params.image_topic}: "
                   f"{problem}")

    def _detect(self, frame: _Frame, image) -> Output:
        from domainvlm.ros.conversions import detection_array
        from domainvlm.ros.images import encode_image

        with self._model_lock:
            params = self.params
            started = time.perf_counter()
            found = self.detector.detect(image, params.prompts,
                                         score_threshold=params.score_threshold,
                                         nms_threshold=params.nms_threshold)
            model_ms = (time.perf_counter() - started) * 1e3
        header = frame.msg.header
        annotated = None
        if params.publish_annotated:
            from domainvlm.detection.draw import draw_detections

            annotated = encode_image(draw_detections(image, found), header)
        output = Output(detection_array(header, found), annotated, model_ms)
        stats = self.stats
        stats.processed += 1
        stats.model_ms.append(model_ms)
        stats.latency_ms.append((time.monotonic_ns() - frame.received_ns) / 1e6)
        stats.done_at.append(time.monotonic())
        return output

    def set_parameters(self, changes: dict[str, object]) -> tuple[bool, str]:
        """Apply a parameter update (all or nothing); (successful, reason) as ROS reports it."""
        try:
            new = self.params.updated(changes)
        except ParameterError as exc:
            return False, str(exc)
        with self._model_lock:
            if new.prompts != self.params.prompts and self.detector is not None:
                try:
                    self._embed(new.prompts)
                except ValueError as exc:  # e.g. a prompt too long for the text tower
                    self._embed(self.params.prompts)
                    return False, f"prompts: {exc}"
            self.params = new
        if "prompts" in changes:
            self.log(f"prompts now: {', '.join(new.prompts)}")
        return True, ""

    def diagnostics(self, header) -> object:
        """One DiagnosticArray: the node's health as `ros2 topic echo /diagnostics` shows it."""
        from domainvlm.ros.messages import DiagnosticArray, DiagnosticStatus, KeyValue

        stats = self.stats
        values = {
            "fps": f"{stats.fps():.2f}",
            "latency_p50_ms": f"{percentile(stats.latency_ms, 0.5):.1f}",
            "latency_p95_ms": f"{percentile(stats.latency_ms, 0.95):.1f}",
            "model_p50_ms": f"{percentile(stats.model_ms, 0.5):.1f}",
            "received": str(stats.received),
            "processed": str(stats.processed),
            "dropped": str(stats.dropped),
            "malformed": str(stats.malformed),
            "stale": str(stats.stale),
            "prompts": "; ".join(self.params.prompts),
            "backend": self.params.backend,
        }
        level, message = DiagnosticStatus.OK, "ok"
        new_malformed, self._malformed_reported = (stats.malformed - self._malformed_reported,
                                                   stats.malformed)
        if new_malformed:
            level, message = DiagnosticStatus.WARN, (f"{new_malformed} malformed image(s) since "
                                                     "the last report")
        status = DiagnosticStatus(level=level, name=f"{NODE_NAME}: detection", message=message,
                                  hardware_id=self.params.device,
                                  values=[KeyValue(k, v) for k, v in values.items()])
        return DiagnosticArray(header=header, status=[status])
