"""Detections <-> `vision_msgs/Detection2DArray` (4.x), and ROS time stamps.

Pure functions on attributes, so they read our cyclonedds messages and rosbags' objects alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from domainvlm.ros import messages

if TYPE_CHECKING:  # torch stays unimported for peers that only read messages
    from domainvlm.detection import Detections

NS = 1_000_000_000


def stamp_ns(header: Any) -> int:
    """A header's stamp in nanoseconds."""
    return int(header.stamp.sec) * NS + int(header.stamp.nanosec)


def header_at(ns: int, frame_id: str) -> messages.Header:
    """A header stamped `ns` nanoseconds (ROS's split: whole seconds, nanoseconds in [0, 1e9))."""
    sec, nanosec = divmod(int(ns), NS)
    return messages.Header(stamp=messages.Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def _copy(header: Any) -> messages.Header:
    return header_at(stamp_ns(header), str(header.frame_id))


def detection_array(header: Any, detections: Detections) -> messages.Detection2DArray:
    """One Detection2D per box: the image's header, one hypothesis (class_id = the prompt text,
    its score) and the box as centre and size in pixels."""
    out = []
    for (x0, y0, x1, y1), score, label in zip(detections.boxes.tolist(),
                                              detections.scores.tolist(), detections.labels,
                                              strict=True):
        hypothesis = messages.ObjectHypothesisWithPose(
            hypothesis=messages.ObjectHypothesis(class_id=label, score=float(score)))
        bbox = messages.BoundingBox2D(
            center=messages.Pose2D(position=messages.Point2D(x=(x0 + x1) / 2, y=(y0 + y1) / 2)),
            size_x=x1 - x0, size_y=y1 - y0)
        out.append(messages.Detection2D(header=_copy(header), results=[hypothesis], bbox=bbox))
    return messages.Detection2DArray(header=_copy(header), detections=out)


def detections_from_array(msg: Any) -> list[tuple[str, float, tuple[float, float, float, float]]]:
    """(label, score, xyxy box) for each hypothesis of each detection, in message order."""
    found = []
    for detection in msg.detections:
        box = detection.bbox
        cx, cy = float(box.center.position.x), float(box.center.position.y)
        half_w, half_h = float(box.size_x) / 2, float(box.size_y) / 2
        xyxy = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
        found.extend((str(result.hypothesis.class_id), float(result.hypothesis.score), xyxy)
                     for result in detection.results)
    return found
