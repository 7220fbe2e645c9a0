"""Open-vocabulary detection: boxes for categories named in words at run time.

A ViLD-style student (`student`, `distill`) learns from a CLIP-like teacher (`teacher`, with the
project's own offline `nano_clip`) to put each region into the teacher's text space, so any
prompt can be matched at the cost of one detector pass. `Detector` (`detector`) is the one API;
OWLv2 / OWL-ViT and Grounding DINO (`owl`, `grounding_dino`) answer behind it too. `coco` reads
detection datasets, `evaluate` scores them with pycocotools. The core never imports ROS.
"""

from importlib import import_module as _import_module
from typing import TYPE_CHECKING
from typing import Any as _Any

if TYPE_CHECKING:  # what editors see; at run time, __getattr__ below (torch loads on use)
    from domainvlm.detection.detector import Detector, load_detector, shipped_detector
    from domainvlm.detection.distill import DistillConfig, distill
    from domainvlm.detection.teacher import Teacher
    from domainvlm.detection.types import Detections, RegionScores

# public name -> module
_EXPORTS = {"Detector": "domainvlm.detection.detector",
            "load_detector": "domainvlm.detection.detector",
            "shipped_detector": "domainvlm.detection.detector",
            "DistillConfig": "domainvlm.detection.distill",
            "distill": "domainvlm.detection.distill",
            "Teacher": "domainvlm.detection.teacher",
            "Detections": "domainvlm.detection.types",
            "RegionScores": "domainvlm.detection.types"}

__all__ = ["Detector", "load_detector", "shipped_detector", "DistillConfig", "distill",
           "Teacher", "Detections", "RegionScores"]


def __getattr__(name: str) -> _Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'domainvlm.detection' has no attribute {name!r}")
    return getattr(_import_module(_EXPORTS[name]), name)
