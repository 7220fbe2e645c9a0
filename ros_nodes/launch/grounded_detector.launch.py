"""`ros2 launch domainvlm_ros grounded_detector.launch.py [image_topic:=/camera/color/image_raw]`

Starts the grounded_detector lifecycle node with the package's config/params.yaml (or
params_file:=yours.yaml) and takes it to active: configure loads the detector, activate
subscribes. autostart:=false leaves both to `ros2 lifecycle set` or a lifecycle manager.
An override argument left empty keeps the parameters file's value.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

PACKAGE = "domainvlm_ros"
# Launch arguments that override one parameter of the parameters file, when given.
OVERRIDES = {
    "image_topic": "camera topic, e.g. /camera/color/image_raw",
    "image_transport": "raw, or compressed (subscribes <image_topic>/compressed)",
    "device": "cpu, cuda, cuda:1, ...",
}


def _detector(context):
    """The node and, with autostart, the events that configure then activate it."""

    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    overrides = {name: arg(name) for name in OVERRIDES if arg(name)}
    node = LifecycleNode(package=PACKAGE, executable="grounded_detector",
                         name="grounded_detector", namespace=arg("namespace"), output="screen",
                         parameters=[arg("params_file"), *([overrides] if overrides else [])])
    if arg("autostart").lower() not in ("true", "1", "yes"):
        return [node]
    # Activate after a successful configure only (not after a later deactivate).
    activate = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                              transition_id=Transition.TRANSITION_ACTIVATE))]))
    configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                            transition_id=Transition.TRANSITION_CONFIGURE))
    return [activate, node, configure]


def generate_launch_description() -> LaunchDescription:
    params = os.path.join(get_package_share_directory(PACKAGE), "config", "params.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=params,
                              description="ROS 2 parameters file (grounded_detector: "
                              "ros__parameters: ...)"),
        *(DeclareLaunchArgument(name, default_value="", description=f"{text}; empty: as in "
                                "params_file") for name, text in OVERRIDES.items()),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate the node at launch"),
        OpaqueFunction(function=_detector),
    ])
