"""The ament_python package `domainvlm_ros` (colcon builds it from this folder).

It installs no Python code of its own: the node is `domainvlm.ros`, from `pip install
domainvlm`. What it installs is what ROS tools look for: the ament index marker, package.xml,
the launch file, the parameters file and the `grounded_detector` executable in
lib/domainvlm_ros (setup.cfg), which `ros2 run` and `ros2 launch` start.

This folder is also the Python package `domainvlm.ros`, so this file ships in the wheel as a
module: `setup()` runs only when the file is run as a script (colcon runs `setup.py ...`).
"""

from pathlib import Path
from xml.etree import ElementTree

HERE = Path(__file__).resolve().parent
PACKAGE = "domainvlm_ros"

DATA_FILES = [
    ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
    (f"share/{PACKAGE}", ["package.xml"]),
    (f"share/{PACKAGE}/launch", ["launch/grounded_detector.launch.py"]),
    (f"share/{PACKAGE}/config", ["config/params.yaml"]),
]
ENTRY_POINTS = {"console_scripts": ["grounded_detector = domainvlm.ros.cli:node_main"]}


def manifest() -> dict[str, str]:
    """Name, version, maintainer and licence from package.xml: stated once, there."""
    root = ElementTree.parse(HERE / "package.xml").getroot()
    maintainer = root.find("maintainer")
    return {"name": root.findtext("name"), "version": root.findtext("version"),
            "description": " ".join(root.findtext("description").split()),
            "maintainer": maintainer.text, "maintainer_email": maintainer.get("email"),
            "license": root.findtext("license")}


if __name__ == "__main__":
    from setuptools import setup

    setup(**manifest(), packages=[], py_modules=[], data_files=DATA_FILES,
          install_requires=["setuptools"], zip_safe=True, entry_points=ENTRY_POINTS)
