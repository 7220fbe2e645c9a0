"""The ROS 2 message definitions `rosbags` reads and writes: Humble's, plus vision_msgs 4.x.

rosbags ships sensor_msgs, std_msgs, diagnostic_msgs and rcl_interfaces but not vision_msgs, so
the Humble/Jazzy (4.x) vision_msgs definitions are registered here from their .msg text; a bag
writer derives the stored message definition and type hash from them.
"""

from __future__ import annotations

import functools

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

# vision_msgs 4.x (Humble, Jazzy): msgtype -> .msg text, field for field as released.
VISION_MSGS: dict[str, str] = {
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y\n",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "vision_msgs/msg/BoundingBox2D": (
        "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n"),
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": (
        "vision_msgs/ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n"),
    "vision_msgs/msg/Detection2D": (
        "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
        "vision_msgs/BoundingBox2D bbox\nstring id\n"),
    "vision_msgs/msg/Detection2DArray": (
        "std_msgs/Header header\nvision_msgs/Detection2D[] detections\n"),
}


@functools.cache
def ros_typestore() -> Typestore:
    """Humble's typestore with vision_msgs 4.x registered (built once per process)."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    types = {}
    for msgtype, text in VISION_MSGS.items():
        types.update(get_types_from_msg(text, msgtype))
    store.register(types)
    return store
