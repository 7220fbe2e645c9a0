"""The node on rclpy (ROS 2 Humble, Jazzy): a lifecycle node around `GroundedDetectorCore`.

configure reads the parameters and loads the detector (prompts embedded); activate subscribes
to the camera (QoS from input_qos), advertises detections, the annotated image and
/diagnostics (QoS from output_qos) and starts the one worker thread that runs the model;
deactivate and cleanup undo that. A parameter update goes to the core, which embeds new
prompts once and refuses what cannot change while configured. Imported only where rclpy
imports; these machines have none, so it runs in no test here (the DDS transport does).
"""

from __future__ import annotations

import threading
from dataclasses import fields

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import Node, State, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray

from domainvlm.ros.conversions import header_at
from domainvlm.ros.convert import rosidl_plain, rosidl_resolve, to_message
from domainvlm.ros.node import (
    NODE_NAME,
    QOS_PROFILES,
    GroundedDetectorCore,
    NodeParams,
    ParameterError,
)

QOS = {name: QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                        reliability=ReliabilityPolicy.RELIABLE if reliable
                        else ReliabilityPolicy.BEST_EFFORT,
                        durability=DurabilityPolicy.VOLATILE)
       for name, (reliable, depth) in QOS_PROFILES.items()}
PARAMETERS = tuple(field.name for field in fields(NodeParams))


def to_rclpy(msg, cls):
    """One of our messages as the rclpy class `cls` of the same ROS type."""
    return to_message(msg, cls, rosidl_resolve, rosidl_plain)


class GroundedDetectorLifecycle(Node):
    """`grounded_detector` as an rclpy lifecycle node (see the module docstring)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        defaults = NodeParams()
        for name in PARAMETERS:
            self.declare_parameter(name, getattr(defaults, name))
        self.core: GroundedDetectorCore | None = None
        # while active: (subscription, timer, publishers); the annotated image's publisher
        # exists even when publish_annotated is off, since that may be switched on live
        self._serving: tuple | None = None
        self._halt = threading.Event()
        self._worker: threading.Thread | None = None
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def node_params(self) -> NodeParams:
        """The node's parameters as they stand (raises ParameterError)."""
        return NodeParams(**{name: self.get_parameter(name).value for name in PARAMETERS})

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            core = GroundedDetectorCore(self.node_params(), log=self.get_logger().info)
            core.load()
        except Exception as exc:  # rclpy would turn it into a silent ERROR transition
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.core = core
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        core, params = self.core, self.core.params
        out = QOS[params.output_qos]
        detections = self.create_publisher(Detection2DArray, params.detections_topic, out)
        annotated = self.create_publisher(Image, params.annotated_topic, out)
        diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", QOS["reliable"])
        kind = params.image_transport
        image_cls, topic = ((CompressedImage, f"{params.image_topic}/compressed")
                            if kind == "compressed" else (Image, params.image_topic))
        subscription = self.create_subscription(image_cls, topic,
                                                lambda msg: core.offer(msg, kind),
                                                QOS[params.input_qos])
        timer = self.create_timer(params.diagnostics_period,
                                  lambda: diagnostics.publish(self._diagnostics(core)))
        self._serving = (subscription, timer, [detections, annotated, diagnostics])
        self._halt.clear()
        self._worker = threading.Thread(target=self._work, args=(core, detections, annotated),
                                        name="grounded_detector-worker", daemon=True)
        self._worker.start()
        self.get_logger().info(f"detecting {params.prompts} on {topic} -> "
                               f"{params.detections_topic}")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self.halt()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self.core = None  # the detector goes with it
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self.halt()
        self.core = None
        return super().on_shutdown(state)

    def halt(self) -> None:
        """Stop the worker, then drop the subscription, timer and publishers (idempotent)."""
        self._halt.set()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        if self._serving is not None:
            subscription, timer, publishers = self._serving
            self.destroy_subscription(subscription)
            self.destroy_timer(timer)
            for publisher in publishers:
                self.destroy_publisher(publisher)
            self._serving = None

    def _work(self, core: GroundedDetectorCore, detections, annotated) -> None:
        """The worker: newest frame -> detector -> publish, until halted."""
        while not self._halt.is_set():
            try:
                output = core.process_next(timeout=0.1)
                if output is None:
                    continue
                detections.publish(to_rclpy(output.detections, Detection2DArray))
                if output.annotated is not None:
                    annotated.publish(to_rclpy(output.annotated, Image))
            except Exception as exc:  # keep serving, without spinning on a lasting fault
                self.get_logger().error(f"detection failed: {exc}", throttle_duration_sec=5.0)
                self._halt.wait(1.0)

    def _diagnostics(self, core: GroundedDetectorCore) -> DiagnosticArray:
        header = header_at(self.get_clock().now().nanoseconds, "")
        return to_rclpy(core.diagnostics(header), DiagnosticArray)

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        # rclpy's own parameters (use_sim_time, qos overrides) are not ours to judge
        changes = {p.name: p.value for p in parameters if p.name in PARAMETERS}
        if not changes:
            return SetParametersResult(successful=True)
        if self.core is not None:
            successful, reason = self.core.set_parameters(changes)
            return SetParametersResult(successful=successful, reason=reason)
        try:  # unconfigured: any parameter may change; checked now, used at configure
            self.node_params().updated(changes, running=False)
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)


def main(argv: list[str] | None = None, *, autostart: bool = False) -> int:
    """Run the node until SIGINT (argv as sys.argv, ROS arguments after --ros-args). Without
    `autostart` it waits unconfigured, as lifecycle nodes do, for `ros2 lifecycle set` or a
    launch file to configure and activate it."""
    rclpy.init(args=argv)
    node = GroundedDetectorLifecycle()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    if autostart:
        node.trigger_configure()
        node.trigger_activate()
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.halt()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def run(params: NodeParams) -> int:
    """`domainvlm ros run` where rclpy imports: these parameters, configured and activated at
    once. Each becomes a `-p name:=value` ROS argument (JSON is valid YAML flow syntax)."""
    import json

    overrides = [arg for name in PARAMETERS
                 for arg in ("-p", f"{name}:={json.dumps(getattr(params, name))}")]
    return main(["domainvlm", "--ros-args", *overrides], autostart=True)
