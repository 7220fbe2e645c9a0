"""The node on plain DDS (cyclonedds): ROS 2 without a ROS install.

ROS 2 nodes find each other through DDS, so speaking ROS 2's conventions is enough to join a
graph: topic `/camera/image_raw` is DDS topic `rt/camera/image_raw`, types carry their ROS
names (`messages.py`), and a service `/grounded_detector/set_parameters` is the topic pair
`rq/grounded_detector/set_parametersRequest` / `rr/grounded_detector/set_parametersReply`.
That last pair is what `ros2 param set /grounded_detector prompts "[...]"` calls.

The domain follows ROS_DOMAIN_ID and the network set-up follows CYCLONEDDS_URI, as for any
ROS 2 node on rmw_cyclonedds.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import fields

from cyclonedds.core import Listener, Policy, Qos
from cyclonedds.domain import DomainParticipant
from cyclonedds.internal import InvalidSample
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration

from domainvlm.errors import ConfigError
from domainvlm.ros import messages as msg
from domainvlm.ros.conversions import header_at
from domainvlm.ros.node import NODE_NAME, QOS_PROFILES, GroundedDetectorCore, NodeParams

DIAGNOSTICS_TOPIC = "/diagnostics"
# CYCLONEDDS_URI for traffic that must not leave the machine (tests, benchmarks): interface lo,
# no multicast, discovery by unicast to the one peer 127.0.0.1.
LOOPBACK_CYCLONEDDS = (
    "<CycloneDDS><Domain><General><Interfaces><NetworkInterface name='lo'/></Interfaces>"
    "<AllowMulticast>false</AllowMulticast><MaxMessageSize>65500B</MaxMessageSize>"
    "<FragmentSize>64000B</FragmentSize></General><Discovery><ParticipantIndex>auto"
    "</ParticipantIndex><Peers><Peer address='127.0.0.1'/></Peers></Discovery></Domain>"
    "</CycloneDDS>"
)
MAX_DOMAIN_ID = 232  # what ROS 2 allows with the default port mapping


def dds_topic(ros_name: str) -> str:
    """ROS 2 topic `/a/b` -> DDS topic `rt/a/b`."""
    return "rt" + ros_name


def service_topics(node: str, service: str) -> tuple[str, str]:
    """(request topic, reply topic) of ROS 2 service `/<node>/<service>`."""
    return f"rq/{node}/{service}Request", f"rr/{node}/{service}Reply"


def qos(profile: str) -> Qos:
    """One of `node.QOS_PROFILES` as cyclonedds QoS."""
    reliable, depth = QOS_PROFILES[profile]
    return Qos(Policy.Reliability.Reliable(duration(seconds=1)) if reliable
               else Policy.Reliability.BestEffort,
               Policy.History.KeepLast(depth), Policy.Durability.Volatile)


def domain_id() -> int:
    """ROS_DOMAIN_ID, as ROS 2 reads it (0 when unset)."""
    value = os.environ.get("ROS_DOMAIN_ID", "").strip() or "0"
    if not value.isdigit() or int(value) > MAX_DOMAIN_ID:
        raise ConfigError(f"ROS_DOMAIN_ID is {value!r}: a whole number from 0 to "
                          f"{MAX_DOMAIN_ID}")
    return int(value)


def valid(samples: list) -> list:
    """The data samples of a take (a writer's dispose or unregister comes as an InvalidSample,
    which carries no data)."""
    return [s for s in samples if not isinstance(s, InvalidSample)]


# Parameters <-> rcl_interfaces/ParameterValue ------------------------------------------------

def to_parameter_value(value: object) -> msg.ParameterValue:
    if isinstance(value, bool):
        return msg.ParameterValue(type=msg.ParameterValue.BOOL, bool_value=value)
    if isinstance(value, int):
        return msg.ParameterValue(type=msg.ParameterValue.INTEGER, integer_value=value)
    if isinstance(value, float):
        return msg.ParameterValue(type=msg.ParameterValue.DOUBLE, double_value=value)
    if isinstance(value, str):
        return msg.ParameterValue(type=msg.ParameterValue.STRING, string_value=value)
    return msg.ParameterValue(type=msg.ParameterValue.STRING_ARRAY,
                              string_array_value=list(value))


def from_parameter_value(value: msg.ParameterValue) -> object:
    kind = msg.ParameterValue
    field_of = {kind.BOOL: "bool_value", kind.INTEGER: "integer_value",
                kind.DOUBLE: "double_value", kind.STRING: "string_value",
                kind.BYTE_ARRAY: "byte_array_value", kind.BOOL_ARRAY: "bool_array_value",
                kind.INTEGER_ARRAY: "integer_array_value", kind.DOUBLE_ARRAY: "double_array_value",
                kind.STRING_ARRAY: "string_array_value"}
    if value.type not in field_of:
        return None  # NOT_SET: ROS's "undeclare", which this node refuses as a bad type
    result = getattr(value, field_of[value.type])
    return list(result) if isinstance(result, list | tuple) else result


class DdsGroundedDetector:
    """The node's DDS endpoints around a loaded `GroundedDetectorCore`."""

    def __init__(self, core: GroundedDetectorCore, *, node_name: str = NODE_NAME,
                 log: Callable[[str], None] | None = None) -> None:
        self.core = core
        self.node_name = node_name
        self.log = log or core.log
        params = core.params
        self.participant = DomainParticipant(domain_id())
        self._keep: list[object] = []  # readers and listeners live as long as the node
        self._arrival_lock = threading.Lock()
        self._arrived = threading.Event()
        self._arrivals = self._taken = self._unseen = 0

        self._detections = self._writer(params.detections_topic, msg.Detection2DArray,
                                        qos(params.output_qos))
        self._annotated = self._writer(params.annotated_topic, msg.Image, qos(params.output_qos))
        self._diagnostics = self._writer(DIAGNOSTICS_TOPIC, msg.DiagnosticArray, qos("reliable"))
        if params.image_transport == "compressed":
            self._subscribe(params.image_topic + "/compressed", msg.CompressedImage, "compressed")
        else:
            self._subscribe(params.image_topic, msg.Image, "raw")
        self._serve("set_parameters", msg.SetParametersRequest, msg.SetParametersResponse,
                    self._set_parameters)
        self._serve("get_parameters", msg.GetParametersRequest, msg.GetParametersResponse,
                    self._get_parameters)
        self._serve("list_parameters", msg.ListParametersRequest, msg.ListParametersResponse,
                    self._list_parameters)

    def _writer(self, ros_name: str, kind, profile: Qos) -> DataWriter:
        return DataWriter(self.participant, Topic(self.participant, dds_topic(ros_name), kind),
                          qos=profile)

    def _subscribe(self, ros_name: str, kind, frame_kind: str) -> None:
        """The camera subscription. Frames are taken by the worker when it is free, not on
        arrival: DDS's keep-last history then replaces a waiting frame in C, and Python reads
        (and holds the interpreter for) only frames the model will see. The listener only
        counts arrivals, so frames replaced unseen are still counted as dropped."""
        def on_arrival(_reader: DataReader) -> None:
            with self._arrival_lock:
                self._arrivals += 1
            self._arrived.set()

        listener = Listener(on_data_available=on_arrival)
        topic = Topic(self.participant, dds_topic(ros_name), kind)
        self._images = DataReader(self.participant, topic, qos=qos(self.core.params.input_qos),
                                  listener=listener)
        self._frame_kind = frame_kind
        self._keep.append(listener)

    def _take_frames(self) -> None:
        """Hand the frames waiting in DDS to the core; count those DDS replaced unseen."""
        with self._arrival_lock:
            arrived = self._arrivals  # before the take: whatever it counts is taken or gone
        try:
            samples = valid(self._images.take(N=64))
        except Exception as exc:  # bytes that are not even CDR of this type
            samples = []
            self.core.malformed(f"not CDR of this type ({type(exc).__name__}: {exc})")
        self._taken += len(samples)
        unseen = max(self._unseen, arrived - self._taken)
        self.core.missed(unseen - self._unseen)
        self._unseen = unseen
        for sample in samples:
            self.core.offer(sample, self._frame_kind)

    def _serve(self, service: str, request_type, response_type, handle) -> None:
        """A ROS 2 service: answer each request with the client's id and sequence number."""
        request_topic, reply_topic = service_topics(self.node_name, service)
        writer = DataWriter(self.participant,
                            Topic(self.participant, reply_topic, response_type),
                            qos=qos("reliable"))

        def on_request(reader: DataReader) -> None:
            for request in valid(reader.take(N=16)):
                response = handle(request)
                response.client_id = request.client_id
                response.sequence_number = request.sequence_number
                writer.write(response)

        listener = Listener(on_data_available=on_request)
        topic = Topic(self.participant, request_topic, request_type)
        self._keep += [writer, listener, DataReader(self.participant, topic,
                                                    qos=qos("reliable"), listener=listener)]

    def _set_parameters(self, request: msg.SetParametersRequest) -> msg.SetParametersResponse:
        """ROS applies each parameter of the request on its own and answers each."""
        results = []
        for parameter in request.parameters:
            ok, reason = self.core.set_parameters(
                {parameter.name: from_parameter_value(parameter.value)})
            results.append(msg.SetParametersResult(successful=ok, reason=reason))
            if not ok:
                self.log(f"refused parameter {parameter.name}: {reason}")
        return msg.SetParametersResponse(results=results)

    def _get_parameters(self, request: msg.GetParametersRequest) -> msg.GetParametersResponse:
        params = self.core.params
        return msg.GetParametersResponse(values=[
            to_parameter_value(getattr(params, name)) if hasattr(params, name)
            else msg.ParameterValue() for name in request.names])

    def _list_parameters(self, request: msg.ListParametersRequest) -> msg.ListParametersResponse:
        names = [f.name for f in fields(NodeParams)
                 if not request.prefixes or any(f.name.startswith(p) for p in request.prefixes)]
        return msg.ListParametersResponse(result=msg.ListParametersResult(names=names))

    def spin(self, stop: threading.Event) -> None:
        """Detect on the newest frame until `stop` is set; publish diagnostics periodically."""
        next_report = time.monotonic() + self.core.params.diagnostics_period
        while not stop.is_set():
            if self._arrived.wait(timeout=0.05):
                self._arrived.clear()
                self._take_frames()
            output = self.core.process_next(timeout=0)
            if output is not None:
                self._detections.write(output.detections)
                if output.annotated is not None:
                    self._annotated.write(output.annotated)
            if time.monotonic() >= next_report:
                self._diagnostics.write(self.core.diagnostics(header_at(time.time_ns(), "")))
                next_report = time.monotonic() + self.core.params.diagnostics_period

    def close(self) -> None:
        """Leave the graph now (peers see the endpoints go) rather than at interpreter exit."""
        self._keep.clear()
        self._images = None
        del self._detections, self._annotated, self._diagnostics
        self.participant = None

