"""domainvlm.ros: the ROS 2 open-vocabulary detection node.

Installed as ``domainvlm.ros``; the folder is also an ament_python package (`domainvlm_ros`).
The node speaks ROS 2 through rclpy where rclpy imports, and otherwise straight over DDS with
cyclonedds (ROS 2's own topic and type names, plain CDR), so it joins a ROS 2 graph either way.
"""
