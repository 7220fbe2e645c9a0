"""The ROS 2 messages the node speaks, declared for DDS (cyclonedds) with ROS 2's own names.

ROS 2 over DDS is plain data: a message `pkg/msg/Type` travels as the final struct
`pkg::msg::dds_::Type_` in XCDR1 (plain CDR), on topic `rt/<name>`; a service `pkg/srv/S` is
two topics, `rq/<name>Request` and `rr/<name>Reply`, whose structs `S_Request_` / `S_Response_`
carry a request header (the client's 64-bit id and a sequence number) before their fields, as
rmw_cyclonedds writes it. Declaring the official definitions field for field therefore lets ROS 2
nodes on the same domain talk to ours; tests compare every byte with `rosbags`' serialisation
of the official definitions.

Large uint8 payloads (`Image.data`, `CompressedImage.data`) are declared `sequence<uint8>`, as
ROS declares them (so the XTypes type information we advertise is ROS's), but are
(de)serialised as one block of `bytes`: the same CDR bytes, ~50× faster than element by element.
"""

from dataclasses import dataclass, field

from cyclonedds.idl import IdlStruct
from cyclonedds.idl._machinery import BytesMachine
from cyclonedds.idl.annotations import final
from cyclonedds.idl.types import array, float64, int32, int64, sequence, uint8, uint32, uint64


def _typename(ros_type: str) -> str:
    """`sensor_msgs/msg/Image` -> `sensor_msgs.msg.dds_.Image_` (cyclonedds writes `::`)."""
    package, kind, name = ros_type.split("/")
    return f"{package}.{kind}.dds_.{name}_"


# builtin_interfaces, std_msgs, geometry_msgs ------------------------------------------------

@dataclass
@final
class Time(IdlStruct, typename=_typename("builtin_interfaces/msg/Time")):
    sec: int32 = 0
    nanosec: uint32 = 0


@dataclass
@final
class Header(IdlStruct, typename=_typename("std_msgs/msg/Header")):
    stamp: Time = field(default_factory=Time)
    frame_id: str = ""


@dataclass
@final
class Point(IdlStruct, typename=_typename("geometry_msgs/msg/Point")):
    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0


@dataclass
@final
class Quaternion(IdlStruct, typename=_typename("geometry_msgs/msg/Quaternion")):
    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0
    w: float64 = 1.0


@dataclass
@final
class Pose(IdlStruct, typename=_typename("geometry_msgs/msg/Pose")):
    position: Point = field(default_factory=Point)
    orientation: Quaternion = field(default_factory=Quaternion)


@dataclass
@final
class PoseWithCovariance(IdlStruct, typename=_typename("geometry_msgs/msg/PoseWithCovariance")):
    pose: Pose = field(default_factory=Pose)
    covariance: array[float64, 36] = field(default_factory=lambda: [0.0] * 36)


# sensor_msgs ----------------------------------------------------------------------------------

@dataclass
@final
class Image(IdlStruct, typename=_typename("sensor_msgs/msg/Image")):
    header: Header = field(default_factory=Header)
    height: uint32 = 0
    width: uint32 = 0
    encoding: str = ""
    is_bigendian: uint8 = 0
    step: uint32 = 0
    data: sequence[uint8] = b""  # bytes: see _octets_as_bytes


@dataclass
@final
class CompressedImage(IdlStruct, typename=_typename("sensor_msgs/msg/CompressedImage")):
    header: Header = field(default_factory=Header)
    format: str = ""
    data: sequence[uint8] = b""  # bytes: see _octets_as_bytes


def _octets_as_bytes(cls: type, member: str) -> None:
    """Serialise `member` (a sequence<uint8>) from and to `bytes` in one block: cyclonedds'
    generic path packs and unpacks it one Python int at a time (~30 ms for a 640x480 frame)."""
    idl = cls.__idl__
    idl.populate()
    for machine in (idl.v1_machine, idl.v2_machine):
        machine.members_machines[member] = BytesMachine()


_octets_as_bytes(Image, "data")
_octets_as_bytes(CompressedImage, "data")


# vision_msgs 4.x (Humble, Jazzy) ---------------------------------------------------------------

@dataclass
@final
class Point2D(IdlStruct, typename=_typename("vision_msgs/msg/Point2D")):
    x: float64 = 0.0
    y: float64 = 0.0


@dataclass
@final
class Pose2D(IdlStruct, typename=_typename("vision_msgs/msg/Pose2D")):
    position: Point2D = field(default_factory=Point2D)
    theta: float64 = 0.0


@dataclass
@final
class BoundingBox2D(IdlStruct, typename=_typename("vision_msgs/msg/BoundingBox2D")):
    center: Pose2D = field(default_factory=Pose2D)
    size_x: float64 = 0.0
    size_y: float64 = 0.0


@dataclass
@final
class ObjectHypothesis(IdlStruct, typename=_typename("vision_msgs/msg/ObjectHypothesis")):
    class_id: str = ""
    score: float64 = 0.0


@dataclass
@final
class ObjectHypothesisWithPose(IdlStruct,
                               typename=_typename("vision_msgs/msg/ObjectHypothesisWithPose")):
    hypothesis: ObjectHypothesis = field(default_factory=ObjectHypothesis)
    pose: PoseWithCovariance = field(default_factory=PoseWithCovariance)


@dataclass
@final
class Detection2D(IdlStruct, typename=_typename("vision_msgs/msg/Detection2D")):
    header: Header = field(default_factory=Header)
    results: sequence[ObjectHypothesisWithPose] = field(default_factory=list)
    bbox: BoundingBox2D = field(default_factory=BoundingBox2D)
    id: str = ""


@dataclass
@final
class Detection2DArray(IdlStruct, typename=_typename("vision_msgs/msg/Detection2DArray")):
    header: Header = field(default_factory=Header)
    detections: sequence[Detection2D] = field(default_factory=list)


# diagnostic_msgs ------------------------------------------------------------------------------

@dataclass
@final
class KeyValue(IdlStruct, typename=_typename("diagnostic_msgs/msg/KeyValue")):
    key: str = ""
    value: str = ""


@dataclass
@final
class DiagnosticStatus(IdlStruct, typename=_typename("diagnostic_msgs/msg/DiagnosticStatus")):
    OK = 0
    WARN = 1
    ERROR = 2
    STALE = 3

    level: uint8 = 0  # `byte` in the .msg: one octet on the wire
    name: str = ""
    message: str = ""
    hardware_id: str = ""
    values: sequence[KeyValue] = field(default_factory=list)


@dataclass
@final
class DiagnosticArray(IdlStruct, typename=_typename("diagnostic_msgs/msg/DiagnosticArray")):
    header: Header = field(default_factory=Header)
    status: sequence[DiagnosticStatus] = field(default_factory=list)


# rcl_interfaces: what `ros2 param get/set/list` send -----------------------------------------

@dataclass
@final
class ParameterValue(IdlStruct, typename=_typename("rcl_interfaces/msg/ParameterValue")):
    NOT_SET = 0
    BOOL = 1
    INTEGER = 2
    DOUBLE = 3
    STRING = 4
    BYTE_ARRAY = 5
    BOOL_ARRAY = 6
    INTEGER_ARRAY = 7
    DOUBLE_ARRAY = 8
    STRING_ARRAY = 9

    type: uint8 = 0
    bool_value: bool = False
    integer_value: int64 = 0
    double_value: float64 = 0.0
    string_value: str = ""
    byte_array_value: sequence[uint8] = field(default_factory=list)
    bool_array_value: sequence[bool] = field(default_factory=list)
    integer_array_value: sequence[int64] = field(default_factory=list)
    double_array_value: sequence[float64] = field(default_factory=list)
    string_array_value: sequence[str] = field(default_factory=list)


@dataclass
@final
class Parameter(IdlStruct, typename=_typename("rcl_interfaces/msg/Parameter")):
    name: str = ""
    value: ParameterValue = field(default_factory=ParameterValue)


@dataclass
@final
class SetParametersResult(IdlStruct, typename=_typename("rcl_interfaces/msg/SetParametersResult")):
    successful: bool = False
    reason: str = ""


@dataclass
@final
class ListParametersResult(IdlStruct,
                           typename=_typename("rcl_interfaces/msg/ListParametersResult")):
    names: sequence[str] = field(default_factory=list)
    prefixes: sequence[str] = field(default_factory=list)


# Service structs: rmw_cyclonedds puts (client id, sequence number) before the fields; a server
# answers with the request's pair so the client can match the reply.

@dataclass
@final
class SetParametersRequest(IdlStruct,
                           typename=_typename("rcl_interfaces/srv/SetParameters_Request")):
    client_id: uint64 = 0
    sequence_number: int64 = 0
    parameters: sequence[Parameter] = field(default_factory=list)


@dataclass
@final
class SetParametersResponse(IdlStruct,
                            typename=_typename("rcl_interfaces/srv/SetParameters_Response")):
    client_id: uint64 = 0
    sequence_number: int64 = 0
    results: sequence[SetParametersResult] = field(default_factory=list)


@dataclass
@final
class GetParametersRequest(IdlStruct,
                           typename=_typename("rcl_interfaces/srv/GetParameters_Request")):
    client_id: uint64 = 0
    sequence_number: int64 = 0
    names: sequence[str] = field(default_factory=list)


@dataclass
@final
class GetParametersResponse(IdlStruct,
                            typename=_typename("rcl_interfaces/srv/GetParameters_Response")):
    client_id: uint64 = 0
    sequence_number: int64 = 0
    values: sequence[ParameterValue] = field(default_factory=list)


@dataclass
@final
class ListParametersRequest(IdlStruct,
                            typename=_typename("rcl_interfaces/srv/ListParameters_Request")):
    client_id: uint64 = 0
    sequence_number: int64 = 0
    prefixes: sequence[str] = field(default_factory=list)
    depth: uint64 = 0


@dataclass
@final
class ListParametersResponse(IdlStruct,
                             typename=_typename("rcl_interfaces/srv/ListParameters_Response")):
    client_id: uint64 = 0
    sequence_number: int64 = 0
    result: ListParametersResult = field(default_factory=ListParametersResult)
