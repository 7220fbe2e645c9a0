"""domainvlm.ros: the ROS 2 open-vocabulary detection node.

Installed as ``domainvlm.ros``; the folder is also an ament_python package. Its contents arrive
with the ROS 2 node issue.
"""
