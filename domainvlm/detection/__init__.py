"""Open-vocabulary detection: boxes for categories named in words at run time.

A ViLD-style student (`student`, `distill`) learns from a CLIP-like teacher (`teacher`, with the
project's own offline `nano_clip`) to put each region into the teacher's text space, so any
prompt can be matched at the cost of one detector pass. `Detector` (`detector`) is the one API;
OWLv2 / OWL-ViT and Grounding DINO (`owl`, `grounding_dino`) answer behind it too. `coco` reads
detection datasets, `evaluate` scores them with pycocotools. The core never imports ROS.
"""
