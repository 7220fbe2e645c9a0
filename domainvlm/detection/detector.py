"""`Detector`: open-vocabulary detection with a distilled ViLD student, prompts in words.

A saved student is a folder: `model.safetensors`, `vild.json` (architecture, the teacher whose
text space it lives in, with that teacher's fingerprint, the base categories it was trained on,
the scoring chosen on validation) and a model card. Prompts are embedded by the teacher's text
tower once per prompt set and kept, so changing prompts costs one text pass and every frame
after that costs one detector pass. `load_detector` opens a student folder or, by its config, an
OWLv2 / OWL-ViT / Grounding DINO checkpoint behind the same `detect`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image

from domainvlm.detection.student import (
    RegionOutputs,
    ScoringParams,
    StudentConfig,
    ViLDStudent,
    control_embeddings,
    score_regions,
)
from domainvlm.detection.types import (
    Detections,
    RegionScores,
    as_rgb,
    check_prompts,
    detect_with,
)
from domainvlm.errors import ModelLoadError

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "vild.json"
FORMAT = 1
DEFAULT_SCORE_THRESHOLD = 0.3
DEFAULT_NMS_THRESHOLD = 0.5
# A student distilled by `domainvlm demo robot` (easy split, seed 0), float16: what `detect` and
# the ROS node use when no model is named. Rebuilt by scripts/ship-robot-detector.
SHIPPED_DETECTOR = Path(__file__).parents[1] / "assets" / "robot_detector"


def shipped_detector() -> Path:
    """The folder of the shipped robot detector (`Detector.load` opens it)."""
    if not (SHIPPED_DETECTOR / CONFIG_FILE).is_file():
        raise ModelLoadError(f"the shipped robot detector is missing from {SHIPPED_DETECTOR} "
                             "(a broken install?); reinstall domainvlm or pass a model")
    return SHIPPED_DETECTOR


def image_bytes(image: Image.Image, *, name: str = "image") -> torch.Tensor:
    """CHW uint8 from any image `as_rgb` accepts (what training keeps in memory)."""
    import numpy as np

    array = np.array(as_rgb(image, name=name), dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def image_tensor(image: Image.Image, *, name: str = "image") -> torch.Tensor:
    """CHW float in [0, 1] from any image `as_rgb` accepts (what the student reads)."""
    return image_bytes(image, name=name).float() / 255


class Detector:
    """A distilled student and the teacher text tower that turns prompts into classifiers."""

    def __init__(self, student: ViLDStudent, teacher, *, base: Sequence[str],
                 scoring: ScoringParams, name: str = "vild-student") -> None:
        self.student = student.eval()
        self.teacher = teacher
        self.base = tuple(base)
        self.scoring = scoring
        self.name = name
        self._prompts: tuple[tuple[str, ...], torch.Tensor, torch.Tensor] | None = None
        self.text_passes = 0  # prompt sets embedded so far (changing prompts costs one)

    @classmethod
    def load(cls, path: Path | str, *, device: str = "cpu") -> Detector:
        """Open a saved student; its teacher is loaded for the text side and must be the one
        it was distilled from (fingerprint checked: another text space would give nonsense)."""
        from safetensors.torch import load_file

        from domainvlm.detection.teacher import Teacher

        folder = Path(path)
        config_path = folder / CONFIG_FILE
        if not config_path.is_file():
            raise ModelLoadError(f"{folder}: no {CONFIG_FILE}, so not a distilled detector "
                                 "(make one with `domainvlm distill`)")
        meta = json.loads(config_path.read_text())
        if meta.get("format") != FORMAT:
            raise ModelLoadError(f"{config_path}: format {meta.get('format')!r}, this version "
                                 f"reads format {FORMAT}; distil it again")
        student = ViLDStudent(StudentConfig.from_dict(meta["student"]))
        student.load_state_dict(load_file(folder / MODEL_FILE, device=device))
        teacher = Teacher.load(meta["teacher"]["source"], device=device)
        if teacher.fingerprint != meta["teacher"]["fingerprint"]:
            raise ModelLoadError(
                f"{folder}: distilled from teacher {meta['teacher']['source'] or 'nano-clip'} "
                f"with fingerprint {meta['teacher']['fingerprint'][:12]}, but that teacher now "
                f"has {teacher.fingerprint[:12]}: its text space differs, so prompts would not "
                "match regions. Use the original teacher or distil again")
        return cls(student.to(device), teacher, base=meta["base"],
                   scoring=ScoringParams(**meta["scoring"]), name=folder.name)

    def save(self, folder: Path, *, extra: dict | None = None) -> None:
        """Write the student into `folder` (which the caller publishes atomically)."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.student.state_dict().items()},
                  folder / MODEL_FILE)
        meta = {"format": FORMAT, "student": self.student.config.to_dict(),
                "teacher": {"source": self.teacher.source,
                            "fingerprint": self.teacher.fingerprint},
                "base": list(self.base), "scoring": asdict(self.scoring), **(extra or {})}
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    def prompt_embeddings(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text embeddings (C, D) of `prompts` and which are base categories, computed once per
        prompt set."""
        names = tuple(check_prompts(prompts))
        if self._prompts is None or self._prompts[0] != names:
            base = {name.lower() for name in self.base}
            embeddings = self.teacher.embed_text(names)  # also refuses overlong prompts
            is_base = torch.tensor([name.lower() in base for name in names])
            self._prompts = (names, embeddings, is_base)
            self.text_passes += 1
        return self._prompts[1], self._prompts[2]

    def embed(self, images: Sequence[Image.Image]) -> list[RegionOutputs]:
        """The student's regions of each image, before any prompt (re-scorable)."""
        tensors = [image_tensor(img, name=f"image {i + 1}") for i, img in enumerate(images)]
        return self.student.regions(tensors)

    def score(self, outputs: Sequence[RegionOutputs], prompts: Sequence[str],
              scoring: ScoringParams | None = None) -> list[RegionScores]:
        embeddings, is_base = self.prompt_embeddings(prompts)
        names = list(self._prompts[0])
        scoring = scoring or self.scoring
        if scoring.mode == "control":
            embeddings = control_embeddings(names, embeddings.shape[1])
        with torch.inference_mode():
            return [RegionScores(boxes=out.boxes,
                                 probs=score_regions(out, self.student.heads, embeddings,
                                                     is_base, scoring),
                                 vocabulary=names) for out in outputs]

    def regions(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[RegionScores]:
        """Every region of each image with a probability per prompt (for evaluation)."""
        self.prompt_embeddings(prompts)  # bad prompts fail before any image work
        return self.score(self.embed(images), prompts)

    def detect(self, images: Image.Image | Sequence[Image.Image], prompts: Sequence[str], *,
               score_threshold: float = DEFAULT_SCORE_THRESHOLD,
               nms_threshold: float = DEFAULT_NMS_THRESHOLD) -> Detections | list[Detections]:
        """Boxes, scores and labels (the prompt text) for one image or a batch."""
        return detect_with(self.regions, images, prompts, score_threshold=score_threshold,
                           nms_threshold=nms_threshold)


def load_detector(source: str | Path, *, backend: str | None = None, device: str = "cpu"):
    """A detector by folder or hub id: a distilled student (a folder with `vild.json`), else
    an OWLv2 / OWL-ViT / Grounding DINO checkpoint (`backend` forces which)."""
    if (Path(source) / CONFIG_FILE).is_file() and backend in (None, "vild"):
        return Detector.load(source, device=device)
    if backend == "vild" or (Path(source).is_dir() and not (Path(source) / "config.json")
                             .is_file()):
        raise ModelLoadError(f"{source}: not a distilled detector folder (no {CONFIG_FILE}); "
                             "make one with `domainvlm distill` or `domainvlm demo robot`")
    from domainvlm.detection.backends import load_backend

    return load_backend(source, backend=backend, device=device)
