"""The other side of the node, without ROS 2: a camera, a detections listener and the
parameter client `ros2 param` would be.

Tests and `benchmarks/ros_node.py` drive a real node process with it; on a machine without
ROS 2 it is also the quickest way to feed a running node and watch what comes back.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass

from cyclonedds.core import Listener
from cyclonedds.domain import DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic

from domainvlm.ros import messages as msg
from domainvlm.ros.dds import (
    DIAGNOSTICS_TOPIC,
    dds_topic,
    domain_id,
    from_parameter_value,
    qos,
    service_topics,
    to_parameter_value,
    valid,
)
from domainvlm.ros.node import NODE_NAME, NodeParams


@dataclass
class Received:
    """A message and when it arrived (time.monotonic_ns)."""

    message: object
    at_ns: int


class RosPeer:
    """One DDS participant with the endpoints that face the node's."""

    def __init__(self, *, image_topic: str = NodeParams.image_topic, compressed: bool = False,
                 detections_topic: str = NodeParams.detections_topic,
                 annotated_topic: str | None = None, node: str = NODE_NAME,
                 image_qos: str = "sensor_data") -> None:
        self.participant = DomainParticipant(domain_id())
        self.node = node
        kind = msg.CompressedImage if compressed else msg.Image
        name = image_topic + ("/compressed" if compressed else "")
        self.image_writer = DataWriter(self.participant,
                                       Topic(self.participant, dds_topic(name), kind),
                                       qos=qos(image_qos))
        self.detections: queue.Queue[Received] = queue.Queue()
        self.annotated: queue.Queue[Received] = queue.Queue()
        self.diagnostics: queue.Queue[Received] = queue.Queue()
        self._readers = [
            self._reader(dds_topic(detections_topic), msg.Detection2DArray, self.detections),
            self._reader(dds_topic(DIAGNOSTICS_TOPIC), msg.DiagnosticArray, self.diagnostics)]
        if annotated_topic:
            self._readers.append(self._reader(dds_topic(annotated_topic), msg.Image,
                                              self.annotated))
        self._replies: dict[str, queue.Queue] = {}
        self._requests: dict[str, DataWriter] = {}
        self._sequence = itertools.count(1)
        self._lock = threading.Lock()
        for service, request, response in (
                ("set_parameters", msg.SetParametersRequest, msg.SetParametersResponse),
                ("get_parameters", msg.GetParametersRequest, msg.GetParametersResponse)):
            self._client(service, request, response)

    def _reader(self, dds_name: str, kind, into: queue.Queue) -> tuple:
        """A reliable reader of DDS topic `dds_name` putting each sample, with its arrival
        time, into `into`."""
        def on_data(reader: DataReader) -> None:
            now = time.monotonic_ns()
            for sample in valid(reader.take(N=64)):
                into.put(Received(sample, now))

        listener = Listener(on_data_available=on_data)
        topic = Topic(self.participant, dds_name, kind)
        return listener, DataReader(self.participant, topic, qos=qos("reliable"),
                                    listener=listener)

    def _client(self, service: str, request_type, response_type) -> None:
        request_topic, reply_topic = service_topics(self.node, service)
        self._requests[service] = DataWriter(
            self.participant, Topic(self.participant, request_topic, request_type),
            qos=qos("reliable"))
        replies: queue.Queue = queue.Queue()
        self._replies[service] = replies
        self._readers.append(self._reader(reply_topic, response_type, replies))

    @property
    def client_id(self) -> int:
        """This client's id in request headers (rmw_cyclonedds uses the writer's handle)."""
        return self._requests["set_parameters"].get_instance_handle() & (2**64 - 1)

    def wait_for_node(self, timeout: float = 60.0) -> None:
        """Until the node's image subscription, detections publisher and parameter service
        have all matched ours (a message sent earlier would be lost)."""
        deadline = time.monotonic() + timeout
        writers = [self.image_writer, *self._requests.values()]
        readers = [reader for _, reader in self._readers]
        while time.monotonic() < deadline:
            if all(w.get_publication_matched_status().current_count for w in writers) and \
                    all(r.get_subscription_matched_status().current_count for r in readers):
                return
            time.sleep(0.05)
        raise TimeoutError(f"no {self.node} node matched within {timeout:g} s (is it running, "
                           "in this ROS_DOMAIN_ID, with the same CYCLONEDDS_URI?)")

    def publish(self, message) -> None:
        """Send one image message (messages.Image or messages.CompressedImage)."""
        self.image_writer.write(message)

    def _call(self, service: str, request, timeout: float):
        with self._lock:
            request.client_id = self.client_id
            request.sequence_number = next(self._sequence)
            self._requests[service].write(request)
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                try:
                    reply = self._replies[service].get(timeout=left).message
                except queue.Empty:
                    break
                if (reply.client_id, reply.sequence_number) == (request.client_id,
                                                                request.sequence_number):
                    return reply
        raise TimeoutError(f"/{self.node}/{service} did not answer within {timeout:g} s")

    def set_parameters(self, timeout: float = 10.0, **values) -> list[tuple[bool, str]]:
        """What `ros2 param set` does: one request, a (successful, reason) per parameter."""
        request = msg.SetParametersRequest(parameters=[
            msg.Parameter(name=name, value=to_parameter_value(value))
            for name, value in values.items()])
        reply = self._call("set_parameters", request, timeout)
        return [(r.successful, r.reason) for r in reply.results]

    def get_parameters(self, *names: str, timeout: float = 10.0) -> list[object]:
        reply = self._call("get_parameters", msg.GetParametersRequest(names=list(names)),
                           timeout)
        return [from_parameter_value(value) for value in reply.values]

    def close(self) -> None:
        self._readers.clear()
        self._requests.clear()
        self.image_writer = None
        self.participant = None
