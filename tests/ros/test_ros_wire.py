"""Our DDS messages are ROS 2's on the wire: each one's CDR bytes equal `rosbags`'
serialisation of the official definition holding the same content, and each side reads the
other's bytes back to the same content.

The rosbags side is built by hand from the official .msg definitions (Humble's typestore, the
vision_msgs 4.x texts, and the rmw_cyclonedds request header put before a service's fields),
independently of our classes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from domainvlm.ros import messages as m
from domainvlm.ros.typestore import VISION_MSGS, ros_typestore

# rcl_interfaces/srv/*.srv bodies as released; rmw_cyclonedds writes (client guid, sequence
# number) in front of either half.
SERVICE_HEADER = "uint64 client_id\nint64 sequence_number\n"
SERVICES = {
    "SetParameters_Request": "rcl_interfaces/Parameter[] parameters\n",
    "SetParameters_Response": "rcl_interfaces/SetParametersResult[] results\n",
    "GetParameters_Request": "string[] names\n",
    "GetParameters_Response": "rcl_interfaces/ParameterValue[] values\n",
    "ListParameters_Request": "uint64 DEPTH_RECURSIVE=0\nstring[] prefixes\nuint64 depth\n",
    "ListParameters_Response": "rcl_interfaces/ListParametersResult result\n",
}


@pytest.fixture(scope="module")
def ts():
    """Humble's definitions, vision_msgs 4.x and the service structs' wire shapes."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    types = {}
    for msgtype, text in VISION_MSGS.items():
        types.update(get_types_from_msg(text, msgtype))
    for name, body in SERVICES.items():
        types.update(get_types_from_msg(SERVICE_HEADER + body, f"wire_test/msg/{name}"))
    store.register(types)
    return store


def rt(ts, msgtype: str, **fields):
    return ts.types[msgtype](**fields)


def stamp(ts, sec: int = 1_700_000_123, nanosec: int = 987_654_321, frame: str = "camera_optical"):
    ours = m.Header(stamp=m.Time(sec=sec, nanosec=nanosec), frame_id=frame)
    theirs = rt(ts, "std_msgs/msg/Header", frame_id=frame,
                stamp=rt(ts, "builtin_interfaces/msg/Time", sec=sec, nanosec=nanosec))
    return ours, theirs


def plain(value):
    """Nested dicts and lists of a message of either kind, for comparing contents."""
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.name != "__msgtype__"}
    if isinstance(value, np.ndarray | bytes | list | tuple):
        return [plain(item) for item in (value.tolist() if isinstance(value, np.ndarray)
                                         else value)]
    return value


def check_wire(ts, ours, theirs) -> None:
    """Same bytes, and each side decodes the other's bytes to the same content."""
    msgtype = theirs.__msgtype__
    expected = ts.serialize_cdr(theirs, msgtype)
    assert ours.serialize() == expected
    assert type(ours).deserialize(expected) == ours
    assert plain(ts.deserialize_cdr(ours.serialize(), msgtype)) == plain(theirs)


RNG = np.random.default_rng(20)


@pytest.mark.parametrize(("height", "width", "encoding", "step", "bigendian"), [
    (1, 1, "rgb8", 3, 0),
    (5, 3, "rgb8", 11, 0),        # odd sizes, 2 bytes of row padding
    (7, 3, "bgra8", 29, 0),
    (4, 5, "mono16", 10, 1),
    (3, 17, "mono8", 20, 0),
])
def test_image_bytes_equal_the_official_definition(ts, height, width, encoding, step,
                                                   bigendian) -> None:
    data = RNG.integers(0, 256, step * height, dtype=np.uint8)
    h_ours, h_theirs = stamp(ts)
    ours = m.Image(header=h_ours, height=height, width=width, encoding=encoding,
                   is_bigendian=bigendian, step=step, data=data.tobytes())
    theirs = rt(ts, "sensor_msgs/msg/Image", header=h_theirs, height=height, width=width,
                encoding=encoding, is_bigendian=bigendian, step=step, data=data)
    check_wire(ts, ours, theirs)


@pytest.mark.parametrize("payload", [b"", b"\xff\xd8\xff\xe0 odd", bytes(range(256)) * 3])
def test_compressed_image_bytes_equal_the_official_definition(ts, payload) -> None:
    h_ours, h_theirs = stamp(ts, 5, 7, "")
    ours = m.CompressedImage(header=h_ours, format="jpeg", data=payload)
    theirs = rt(ts, "sensor_msgs/msg/CompressedImage", header=h_theirs, format="jpeg",
                data=np.frombuffer(payload, np.uint8))
    check_wire(ts, ours, theirs)


def detection_pair(ts, label: str, score: float, cx: float, cy: float, sx: float, sy: float,
                   covariance: list[float]):
    h_ours, h_theirs = stamp(ts)
    ours = m.Detection2D(
        header=h_ours, id="",
        results=[m.ObjectHypothesisWithPose(
            hypothesis=m.ObjectHypothesis(class_id=label, score=score),
            pose=m.PoseWithCovariance(covariance=covariance))],
        bbox=m.BoundingBox2D(center=m.Pose2D(position=m.Point2D(x=cx, y=cy), theta=0.0),
                             size_x=sx, size_y=sy))
    pose = rt(ts, "geometry_msgs/msg/PoseWithCovariance",
              pose=rt(ts, "geometry_msgs/msg/Pose",
                      position=rt(ts, "geometry_msgs/msg/Point", x=0.0, y=0.0, z=0.0),
                      orientation=rt(ts, "geometry_msgs/msg/Quaternion",
                                     x=0.0, y=0.0, z=0.0, w=1.0)),
              covariance=np.array(covariance, dtype=np.float64))
    theirs = rt(ts, "vision_msgs/msg/Detection2D", header=h_theirs, id="",
                results=[rt(ts, "vision_msgs/msg/ObjectHypothesisWithPose", pose=pose,
                            hypothesis=rt(ts, "vision_msgs/msg/ObjectHypothesis",
                                          class_id=label, score=score))],
                bbox=rt(ts, "vision_msgs/msg/BoundingBox2D", size_x=sx, size_y=sy,
                        center=rt(ts, "vision_msgs/msg/Pose2D", theta=0.0,
                                  position=rt(ts, "vision_msgs/msg/Point2D", x=cx, y=cy))))
    return ours, theirs


DETECTIONS = [
    ("red mug", 0.91, 10.5, 20.25, 4.0, 5.0),
    ("tasse à café — 红色杯子 ☕", 0.5, 319.75, 0.0, 640.0, 0.5),
    ("b", 1e-9, 1.0, 2.0, 3.0, 4.0),
]


@pytest.mark.parametrize("count", [0, 1, 3])
def test_detection_array_bytes_equal_vision_msgs_4(ts, count) -> None:
    pairs = [detection_pair(ts, *row, covariance=[float(i) * (k + 1) for i in range(36)])
             for k, row in enumerate(DETECTIONS[:count])]
    h_ours, h_theirs = stamp(ts)
    ours = m.Detection2DArray(header=h_ours, detections=[p[0] for p in pairs])
    theirs = rt(ts, "vision_msgs/msg/Detection2DArray", header=h_theirs,
                detections=[p[1] for p in pairs])
    check_wire(ts, ours, theirs)


def test_diagnostic_array_bytes_equal_the_official_definition(ts) -> None:
    h_ours, h_theirs = stamp(ts)
    values = [("fps", "12.5"), ("dropped", "3"), ("prompts", "red mug; boîte bleue")]
    ours = m.DiagnosticArray(header=h_ours, status=[
        m.DiagnosticStatus(level=m.DiagnosticStatus.WARN, name="grounded_detector: node",
                           message="dropping frames", hardware_id="cpu",
                           values=[m.KeyValue(key=k, value=v) for k, v in values]),
        m.DiagnosticStatus(level=m.DiagnosticStatus.STALE, name="other")])
    theirs = rt(ts, "diagnostic_msgs/msg/DiagnosticArray", header=h_theirs, status=[
        rt(ts, "diagnostic_msgs/msg/DiagnosticStatus", level=1, name="grounded_detector: node",
           message="dropping frames", hardware_id="cpu",
           values=[rt(ts, "diagnostic_msgs/msg/KeyValue", key=k, value=v) for k, v in values]),
        rt(ts, "diagnostic_msgs/msg/DiagnosticStatus", level=3, name="other", message="",
           hardware_id="", values=[])])
    check_wire(ts, ours, theirs)


def parameter_value(ts, kind: int, **fields):
    """Ours and rosbags' ParameterValue: every other field at its default. rosbags holds
    `byte[]` as int8, ours as a list of uint8: the same octets on the wire."""
    defaults = {"bool_value": False, "integer_value": 0, "double_value": 0.0, "string_value": "",
                "byte_array_value": np.zeros(0, np.int8),
                "bool_array_value": np.zeros(0, bool),
                "integer_array_value": np.zeros(0, np.int64),
                "double_array_value": np.zeros(0, np.float64), "string_array_value": []}
    theirs = {k: (np.array(v, np.uint8).view(np.int8) if k == "byte_array_value" else
                  np.array(v) if isinstance(v, list) and k != "string_array_value" else v)
              for k, v in fields.items()}
    return (m.ParameterValue(type=kind, **fields),
            rt(ts, "rcl_interfaces/msg/ParameterValue", type=kind, **{**defaults, **theirs}))


def values(ts):
    return [
        parameter_value(ts, m.ParameterValue.STRING_ARRAY, string_array_value=["red mug", "é"]),
        parameter_value(ts, m.ParameterValue.DOUBLE, double_value=0.35),
        parameter_value(ts, m.ParameterValue.BOOL, bool_value=True),
        parameter_value(ts, m.ParameterValue.INTEGER, integer_value=-(2**40)),
        parameter_value(ts, m.ParameterValue.BYTE_ARRAY,
                        byte_array_value=[0, 255, 7]),
        parameter_value(ts, m.ParameterValue.INTEGER_ARRAY,
                        integer_array_value=[1, -2]),
        parameter_value(ts, m.ParameterValue.BOOL_ARRAY,
                        bool_array_value=[True, False, True]),
        parameter_value(ts, m.ParameterValue.DOUBLE_ARRAY,
                        double_array_value=[0.5, -1e300]),
        parameter_value(ts, m.ParameterValue.NOT_SET),
    ]


CLIENT = {"client_id": 0x0123_4567_89AB_CDEF, "sequence_number": 42}


def service_pairs(ts):
    """(ours, rosbags') for each request and response the parameter services exchange."""
    vals = values(ts)
    names = ["prompts", "score_threshold", "nms_threshold", "publish_annotated"]
    w = "wire_test/msg/"
    results = [(True, ""), (False, "score_threshold must be between 0 and 1, got 1.5")]
    return [
        (m.SetParametersRequest(**CLIENT, parameters=[m.Parameter(name=n, value=v[0])
                                                       for n, v in zip(names, vals, strict=False)]),
         rt(ts, w + "SetParameters_Request", **CLIENT, parameters=[
             rt(ts, "rcl_interfaces/msg/Parameter", name=n, value=v[1])
             for n, v in zip(names, vals, strict=False)])),
        (m.SetParametersResponse(**CLIENT, results=[m.SetParametersResult(successful=s,
                                                                          reason=r)
                                                    for s, r in results]),
         rt(ts, w + "SetParameters_Response", **CLIENT, results=[
             rt(ts, "rcl_interfaces/msg/SetParametersResult", successful=s, reason=r)
             for s, r in results])),
        (m.GetParametersRequest(**CLIENT, names=names),
         rt(ts, w + "GetParameters_Request", **CLIENT, names=names)),
        (m.GetParametersResponse(**CLIENT, values=[v[0] for v in vals]),
         rt(ts, w + "GetParameters_Response", **CLIENT, values=[v[1] for v in vals])),
        (m.ListParametersRequest(**CLIENT, prefixes=["", "qos"], depth=3),
         rt(ts, w + "ListParameters_Request", **CLIENT, prefixes=["", "qos"], depth=3)),
        (m.ListParametersResponse(**CLIENT, result=m.ListParametersResult(
            names=names, prefixes=["qos"])),
         rt(ts, w + "ListParameters_Response", **CLIENT, result=rt(
             ts, "rcl_interfaces/msg/ListParametersResult", names=names, prefixes=["qos"]))),
    ]


@pytest.mark.parametrize("index", range(6), ids=list(SERVICES))
def test_parameter_service_structs_equal_the_rmw_cyclonedds_wire(ts, index) -> None:
    ours, theirs = service_pairs(ts)[index]
    check_wire(ts, ours, theirs)


def test_every_message_has_its_ros_type_name(ts) -> None:
    """The DDS type name `pkg::msg::dds_::T_` of each message class names a ROS type whose
    fields are ours, in order."""
    classes = [c for c in vars(m).values() if isinstance(c, type) and c.__module__ == m.__name__
               and hasattr(c, "__idl_typename__")]
    assert len(classes) >= 20
    for cls in classes:
        package, kind, dds, name = cls.__idl_typename__.split(".")
        assert dds == "dds_" and name.endswith("_")
        if kind == "srv":
            body = SERVICE_HEADER + SERVICES[name[:-1]]
            official = [line.split()[1] for line in body.splitlines() if "=" not in line]
        else:
            official = [field for field, _ in ts.fielddefs[f"{package}/msg/{name[:-1]}"][1]]
        assert [f.name for f in dataclasses.fields(cls)] == official, cls.__name__
    assert set(VISION_MSGS) <= set(ros_typestore().types)
