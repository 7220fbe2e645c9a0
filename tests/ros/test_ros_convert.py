"""to_message: our DDS message dataclasses as another library's classes, field for field.

rclpy, the target the node uses, is absent here, so rosbags stands in: its classes have the
same field names and nesting. Oracle: a message converted to rosbags' class and serialised by
rosbags gives exactly the CDR bytes cyclonedds gives for ours, so every field, nested message
and sequence arrived with its value. rclpy's own rules (rosidl_plain, rosidl_resolve) are
checked on the field-type strings its generated classes carry.
"""

from __future__ import annotations

import array
import sys
import types

import numpy as np
import pytest
from rosbags.interfaces import Nodetype
from rosbags.typesys import Stores, get_typestore

from domainvlm.ros import messages as m
from domainvlm.ros.convert import rosidl_plain, rosidl_resolve, to_message

MANY = (Nodetype.SEQUENCE, Nodetype.ARRAY)


def rosbags_target(typestore):
    """(resolve, plain) for rosbags' classes, read off its field definitions."""

    def field(cls, name):
        return dict(typestore.fielddefs[cls.__msgtype__][1])[name]

    def resolve(cls, name):
        kind, detail = field(cls, name)
        if kind in MANY:
            kind, detail = detail[0]
        assert kind == Nodetype.NAME
        return typestore.types[detail]

    def plain(cls, name, value):
        kind, detail = field(cls, name)
        if kind in MANY and detail[0][0] == Nodetype.BASE and detail[0][1][0] != "string":
            dtype = {"byte": np.uint8, "char": np.uint8}.get(detail[0][1][0], detail[0][1][0])
            if isinstance(value, bytes):
                return np.frombuffer(value, dtype=dtype)
            return np.array(value, dtype=dtype)
        return value

    return resolve, plain


def header(sec=1_700_000_000, nanosec=123_456_789, frame_id="camera_optical"):
    return m.Header(stamp=m.Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def detection(label: str, score: float, cx: float, cy: float, w: float, h: float):
    hypothesis = m.ObjectHypothesisWithPose(hypothesis=m.ObjectHypothesis(label, score),
                                            pose=m.PoseWithCovariance())
    box = m.BoundingBox2D(center=m.Pose2D(position=m.Point2D(cx, cy)), size_x=w, size_y=h)
    return m.Detection2D(header=header(), results=[hypothesis], bbox=box)


MESSAGES = {
    "Image": lambda: m.Image(header=header(), height=2, width=3, encoding="rgb8", step=9,
                             data=bytes(range(18))),
    "CompressedImage": lambda: m.CompressedImage(header=header(), format="jpeg",
                                                 data=b"\xff\xd8 not really \xff\xd9"),
    "DiagnosticArray": lambda: m.DiagnosticArray(header=header(), status=[
        m.DiagnosticStatus(level=m.DiagnosticStatus.WARN, name="grounded_detector: detection",
                           message="3 malformed image(s)", hardware_id="cpu",
                           values=[m.KeyValue("fps", "9.81"), m.KeyValue("dropped", "4")]),
        m.DiagnosticStatus(level=m.DiagnosticStatus.OK, name="second", values=[])]),
    "PoseWithCovariance": lambda: m.PoseWithCovariance(
        pose=m.Pose(position=m.Point(1.5, -2.0, 0.25), orientation=m.Quaternion(0, 0, 0.6, 0.8)),
        covariance=[float(i) / 7 for i in range(36)]),
    "Detection2DArray": lambda: m.Detection2DArray(header=header(), detections=[
        detection("red mug", 0.91, 120.5, 80.0, 40.0, 52.0),
        detection("blue box", 0.47, 300.0, 211.25, 90.0, 60.5)]),
}


def typestore_for(name: str):
    if name == "Detection2DArray":  # vision_msgs is not in rosbags' stores
        from domainvlm.ros.typestore import ros_typestore

        return ros_typestore()
    return get_typestore(Stores.ROS2_HUMBLE)


@pytest.mark.parametrize("name", list(MESSAGES))
def test_converted_message_serialises_to_our_bytes(name):
    ours = MESSAGES[name]()
    typestore = typestore_for(name)
    package, kind, _, name_ = type(ours).__idl_typename__.split(".")  # pkg.msg.dds_.Type_
    msgtype = f"{package}/{kind}/{name_.rstrip('_')}"
    target = typestore.types[msgtype]
    converted = to_message(ours, target, *rosbags_target(typestore))
    assert type(converted) is target
    assert bytes(typestore.serialize_cdr(converted, msgtype)) == ours.serialize()


def generated(**field_types: str) -> type:
    """A class exposing its field types the way rosidl_generator_py's classes do."""
    return type("Generated", (), {
        "get_fields_and_field_types": classmethod(lambda cls: dict(field_types))})


# (rclpy field type as rosidl_generator_py writes it, our value, what rclpy's setter accepts)
PLAIN = [
    ("octet", 2, b"\x02"),  # diagnostic_msgs/DiagnosticStatus.level: `byte` in the .msg
    ("sequence<octet>", b"\x00\x07", [b"\x00", b"\x07"]),
    ("sequence<uint8>", b"\x01\x02\xff", array.array("B", b"\x01\x02\xff")),
    ("sequence<uint8, 4>", b"\x01\x02", array.array("B", b"\x01\x02")),
    ("uint8[3]", b"\x01\x02\x03", [1, 2, 3]),
    ("double", 3, 3.0),
    ("double", np.float32(0.5), 0.5),
    ("double[36]", [0] * 36, [0.0] * 36),
    ("sequence<float>", [1, 2], [1.0, 2.0]),
    ("uint32", np.uint32(480), 480),
    ("int64", 7, 7),
    ("boolean", True, True),
    ("string", "red mug", "red mug"),
    ("string<=8", "cpu", "cpu"),
    ("sequence<string>", ["a", "b"], ["a", "b"]),
]


@pytest.mark.parametrize(("kind", "value", "expected"), PLAIN)
def test_rosidl_plain_gives_what_rclpy_setters_accept(kind, value, expected):
    out = rosidl_plain(generated(field=kind), "field", value)
    assert out == expected
    assert type(out) is type(expected)
    if isinstance(out, list):
        assert [type(item) for item in out] == [type(item) for item in expected]


@pytest.mark.parametrize("kind", ["vision_msgs/Detection2D", "sequence<vision_msgs/Detection2D>",
                                  "sequence<vision_msgs/Detection2D, 5>",
                                  "vision_msgs/Detection2D[2]"])
def test_rosidl_resolve_imports_the_nested_class(kind, monkeypatch):
    """rclpy's classes live in `<package>.msg`; the stand-in module is what it would import."""
    module = types.ModuleType("vision_msgs.msg")
    module.Detection2D = type("Detection2D", (), {})
    monkeypatch.setitem(sys.modules, "vision_msgs", types.ModuleType("vision_msgs"))
    monkeypatch.setitem(sys.modules, "vision_msgs.msg", module)
    assert rosidl_resolve(generated(detections=kind), "detections") is module.Detection2D
