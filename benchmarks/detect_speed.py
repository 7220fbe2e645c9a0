"""Open-vocabulary detection speed: the ViLD student against its teacher's crop-and-classify.

ViLD's promise is one detector pass per image instead of one teacher pass per cropped region.
This measures both side by side in one run on this machine, over the same proposals (the
student's RPN output for each image; the teacher embeds each at 1x and 1.5x, ViLD's recipe),
at 320x240 and 640x480 (the student scales frames to its training frame, so its anchors scale
with the image), plus what changing the prompts costs (one text pass) against reusing them.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/detect_speed.py [--detector FOLDER]

Without --detector it uses a student of the demo's architecture with its initial weights:
speed depends on the architecture and on the proposal count (reported), not on training.
Prints JSON; `ratio` is teacher seconds per image / student seconds per image (goal >= 10).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

GOAL = 10.0
PROMPTS = ["red mug", "blue box", "metal can", "yellow bottle", "green ball"]


def _detector(path: str | None):
    from domainvlm.detection.detector import Detector
    from domainvlm.detection.student import ScoringParams, StudentConfig, ViLDStudent
    from domainvlm.detection.teacher import Teacher

    if path:
        return Detector.load(path)
    teacher = Teacher.load(None)
    torch.manual_seed(0)
    student = ViLDStudent(StudentConfig(embed_dim=teacher.dim))
    return Detector(student, teacher, base=PROMPTS[:3], scoring=ScoringParams())


def _time(fn, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(detector, size: tuple[int, int], images: int, teacher_images: int) -> dict:
    from domainvlm.nano.tabletop_world import render_scene

    scenes = [render_scene(1000 + i, size=size)[0] for i in range(images)]
    detector.detect(scenes[0], PROMPTS)  # warm-up: first-call allocations
    student = []
    for scene in scenes:
        student += _time(lambda s=scene: detector.detect(s, PROMPTS), 1)
    proposals = [detector.embed([scene])[0].proposals for scene in scenes[:teacher_images]]
    teacher = []
    for scene, boxes in zip(scenes, proposals, strict=False):
        teacher += _time(lambda s=scene, b=boxes: detector.teacher.classify_regions(
            s, b, PROMPTS), 1)
    student_s, teacher_s = statistics.median(student), statistics.median(teacher)
    return {"student_images_per_s": round(1 / student_s, 2),
            "teacher_images_per_s": round(1 / teacher_s, 3),
            "student_ms_per_image": round(1000 * student_s, 1),
            "teacher_ms_per_image": round(1000 * teacher_s, 1),
            "proposals_per_image": round(statistics.mean(len(p) for p in proposals), 1),
            "teacher_crops_per_image": 2 * round(statistics.mean(len(p) for p in proposals)),
            "ratio": round(teacher_s / student_s, 2)}


def prompt_change(detector, repeats: int) -> dict:
    """Seconds to embed a prompt set never seen before (one text pass of the teacher) and to
    reuse the current one."""
    from domainvlm.nano.tabletop_world import VOCABULARY

    fresh = iter([list(VOCABULARY[i:i + 3]) for i in range(0, len(VOCABULARY) - 2, 3)])
    changed = _time(lambda: detector.prompt_embeddings(next(fresh)), min(repeats, 10))
    detector.prompt_embeddings(PROMPTS)
    cached = _time(lambda: detector.prompt_embeddings(PROMPTS), repeats)
    return {"prompt_change_ms": round(1000 * statistics.median(changed), 2),
            "cached_prompts_ms": round(1000 * statistics.median(cached), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--detector", help="a distilled detector folder (default: the demo's "
                        "architecture, initial weights)")
    parser.add_argument("--images", type=int, default=12, help="images per frame size")
    parser.add_argument("--teacher-images", type=int, default=4,
                        help="images the (slow) teacher runs on per frame size")
    parser.add_argument("--quick", action="store_true", help="2 images each: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.teacher_images = 2, 1
    torch.set_grad_enabled(False)
    detector = _detector(args.detector)
    result = {"benchmark": "detect_speed", "teacher": detector.teacher.name,
              "student": args.detector or "demo architecture, initial weights",
              "threads": torch.get_num_threads(), "goal_ratio": GOAL, "sizes": {}}
    for size in ((320, 240), (640, 480)):
        result["sizes"][f"{size[0]}x{size[1]}"] = measure(detector, size, args.images,
                                                           args.teacher_images)
    result.update(prompt_change(detector, 3 if args.quick else 10))
    result["goal_met"] = all(s["ratio"] >= GOAL for s in result["sizes"].values())
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
