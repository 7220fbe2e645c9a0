"""ViLD distillation: train the student on base labels and the teacher's region embeddings.

The recipe (ViLD, Gu et al. 2022, on a budget that fits a CPU):
1. The student trains with its RPN, box and ViLD-text losses on base categories only (novel
   labels are dropped from the data before anything else sees it, and the text bank holds base
   names only), plus the random-embedding control head on detached features.
2. After `distill_start` of the steps, its RPN proposes regions on every training image; the
   teacher embeds each proposal from crops at 1x and 1.5x (cached on disk: a rerun or resume
   reuses them), and ViLD-image's L1 loss pulls the image head towards them from then on.
3. The scoring (temperatures, the base-score calibration) is chosen on a validation split
   (`tune_scoring`), never on the test split, and saved with the model.
Checkpoints are written atomically every `save_every` steps; `resume` continues from the last
one with the same optimiser, schedule, data order and distillation targets.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import yaml
from PIL import Image

from domainvlm.atomic import atomic_file, new_folder, write_json
from domainvlm.detection.coco import CategorySplit, CocoDataset, read_coco, read_split, restrict
from domainvlm.detection.detector import Detector, image_bytes
from domainvlm.detection.student import (
    ScoringParams,
    StudentConfig,
    ViLDStudent,
    control_embeddings,
)
from domainvlm.errors import ConfigError, OutputExistsError
from domainvlm.outputs import check_folder, claim_folder, refuse_inputs_inside, written_by
from domainvlm.progress import Reporter

COMMAND = "distill"
CHECKPOINT = "checkpoint.pt"
FINAL = "detector"


@dataclass(frozen=True)
class DistillConfig:
    """Every setting of a distillation run (`domainvlm distill --config FILE`)."""

    train: Path  # COCO instances file of the training images (novel labels are dropped)
    split: Path  # {"base": [...], "novel": [...]}
    validation: Path | None = None  # COCO instances with every label: scoring is tuned here
    teacher: str | None = None  # hub id or folder of a CLIP-like model; None: the nano CLIP
    steps: int = 600
    batch_size: int = 8
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    image_loss_weight: float = 0.1
    distill_start: float = 0.3  # fraction of steps trained before proposals are embedded
    distill_proposals: int = 16  # per training image
    control: bool = True  # train the random-embedding control head
    seed: int = 0
    save_every: int = 100
    student: dict = field(default_factory=dict)  # StudentConfig fields (embed_dim: teacher's)

    @classmethod
    def from_yaml(cls, path: Path) -> DistillConfig:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(known))}")
        base = Path(path).parent
        for key in ("train", "split", "validation"):
            if data.get(key) is not None:
                data[key] = (base / data[key]).resolve()
        for key in ("train", "split"):
            if data.get(key) is None:
                raise ConfigError(f"{path}: `{key}` is required")
        return cls(**data).checked()

    def checked(self) -> DistillConfig:
        if self.steps < 1 or self.batch_size < 1 or self.distill_proposals < 1:
            raise ConfigError("steps, batch_size and distill_proposals must be at least 1")
        if not 0 <= self.distill_start < 1:
            raise ConfigError(f"distill_start is {self.distill_start}: a fraction in [0, 1)")
        bad = set(self.student) - {f.name for f in fields(StudentConfig)} - {"embed_dim"}
        if bad:
            raise ConfigError(f"student: unknown setting(s) {', '.join(sorted(bad))}")
        return self

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass
class TrainingData:
    """The training images (decoded once) and their base-only targets."""

    dataset: CocoDataset
    split: CategorySplit
    images: list[torch.Tensor]
    targets: list[dict[str, torch.Tensor]]


def load_training_data(config: DistillConfig, reporter: Reporter) -> TrainingData:
    """Read the training set and keep base labels only: the one place novel labels are cut."""
    full = read_coco(config.train)
    split = read_split(config.split, full)
    dataset = restrict(full, split.base)
    index = {full.categories[c]: i + 1 for i, c in enumerate(
        full.category_id(name) for name in split.base)}
    images, targets = [], []
    with reporter.task("reading training images", len(dataset.images)) as advance:
        for entry in dataset.images:
            with Image.open(entry.path) as img:
                images.append(image_bytes(img, name=str(entry.path)))
            labels = [index[dataset.categories[c]] for c in dataset.labels[entry.id]]
            targets.append({"boxes": dataset.boxes[entry.id].float().reshape(-1, 4),
                            "labels": torch.tensor(labels, dtype=torch.int64)})
            advance()
    return TrainingData(dataset, split, images, targets)


def _schedule(config: DistillConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def _batch(data: TrainingData, indices: list[int], flips: list[bool],
           distill: tuple[list[torch.Tensor], list[torch.Tensor]] | None):
    images, targets, boxes, embeds = [], [], [], []
    for i, flip in zip(indices, flips, strict=True):
        image = data.images[i].float() / 255
        target = dict(data.targets[i])
        width = image.shape[-1]
        region_boxes = distill[0][i].clone() if distill else None
        if flip:
            image = image.flip(-1)
            b = target["boxes"].clone()
            b[:, [0, 2]] = width - b[:, [2, 0]]
            target["boxes"] = b
            if region_boxes is not None:
                region_boxes[:, [0, 2]] = width - region_boxes[:, [2, 0]]
        images.append(image)
        targets.append(target)
        if distill:
            boxes.append(region_boxes)
            embeds.append(distill[1][i])
    if not distill:
        return images, targets, None, None
    return images, targets, boxes, torch.cat(embeds)


def distill(config: DistillConfig, output: Path, *, resume: bool = False,
            overwrite: bool = False, reporter: Reporter | None = None,
            cache_dir: Path | None = None, recipe: Path | None = None) -> Path:
    """Run the whole distillation into `output` (checkpoints + the final `detector/`);
    `recipe`, the file `config` came from, is one more input OUTPUT must not hold."""
    from domainvlm.detection.teacher import Teacher, region_embeddings

    reporter = reporter or Reporter()
    output = Path(output)
    checkpoint_path = output / CHECKPOINT
    inputs = [recipe, config.train, config.split, config.validation, config.teacher]
    if resume:
        if written_by(output) != COMMAND or not checkpoint_path.is_file():
            raise ConfigError(f"--resume: {output} holds no `domainvlm distill` checkpoint "
                              f"({CHECKPOINT}); start without --resume")
        refuse_inputs_inside(output, COMMAND, inputs)
    else:
        try:
            check_folder(output, COMMAND, inputs=inputs, overwrite=overwrite)
        except OutputExistsError as exc:
            if written_by(output) == COMMAND and not overwrite:
                raise OutputExistsError(f"{output} holds an earlier `domainvlm distill` run: "
                                        "--resume continues it, --overwrite starts again") \
                    from None
            raise exc from None
    torch.manual_seed(config.seed)
    teacher = Teacher.load(config.teacher)
    data = load_training_data(config, reporter)  # bad data fails before OUTPUT is touched
    if not resume:
        claim_folder(output, COMMAND, overwrite=overwrite)
    write_json(output / "config.json", config.to_dict())
    classes = teacher.embed_text(data.split.base)
    control = control_embeddings(data.split.base, teacher.dim)
    student_config = StudentConfig.from_dict({**StudentConfig(embed_dim=teacher.dim).to_dict(),
                                              **config.student, "embed_dim": teacher.dim})
    model = ViLDStudent(student_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    start, distill_targets = 0, None
    if resume:
        state = torch.load(checkpoint_path, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, distill_targets = state["step"], state["distill"]
        torch.set_rng_state(state["rng"])  # torchvision's proposal sampling draws from it
        reporter.line(f"resuming at step {start} of {config.steps}")
    distill_step = int(config.distill_start * config.steps)
    count = len(data.images)
    model.train()
    step, saved = start, checkpoint_path if resume else None
    try:
        with reporter.task("distilling", config.steps, completed=start) as advance:
            for step in range(start, config.steps):
                if step >= distill_step and distill_targets is None:
                    distill_targets = _distill_targets(model, data, teacher, config, reporter,
                                                       cache_dir, region_embeddings)
                    model.train()
                rng = random.Random(config.seed * 1_000_003 + step)
                indices = [rng.randrange(count) for _ in range(config.batch_size)]
                flips = [rng.random() < 0.5 for _ in indices]
                images, targets, boxes, embeds = _batch(data, indices, flips, distill_targets)
                losses = model.losses(images, targets, classes,
                                      control_classes=control if config.control else None,
                                      distill_boxes=boxes, distill_targets=embeds)
                weights = {"loss_image": config.image_loss_weight}
                total = sum(weights.get(k, 1.0) * v for k, v in losses.items())
                if not torch.isfinite(total):
                    from domainvlm.errors import TrainingDivergedError

                    raise TrainingDivergedError(
                        f"step {step}: loss is {total.item()} (learning_rate "
                        f"{config.learning_rate}); lower it and resume from the last checkpoint")
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                optimizer.step()
                scheduler.step()
                advance(loss=total.item(), **{k.removeprefix("loss_"): v.item()
                                              for k, v in losses.items()
                                              if k in ("loss_text", "loss_image")})
                done = step + 1
                if done % config.save_every == 0 or done == config.steps:
                    with atomic_file(checkpoint_path) as handle:
                        torch.save({"model": model.state_dict(),
                                    "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "step": done,
                                    "distill": distill_targets,
                                    "rng": torch.get_rng_state()}, handle)
                    saved = checkpoint_path
    except KeyboardInterrupt:
        from domainvlm.errors import RunInterrupted

        raise RunInterrupted(step, config.steps, saved) from None
    model.eval()
    detector = Detector(model, teacher, base=data.split.base, scoring=ScoringParams(
        text_temperature=student_config.temperature,
        image_temperature=student_config.temperature))
    if config.validation is not None:
        detector.scoring = tune_scoring(detector, read_coco(config.validation), data.split,
                                        reporter)
    final = output / FINAL
    if final.exists():  # a resumed run that had finished: its detector is made again
        import shutil

        shutil.rmtree(final)
    with new_folder(final) as temp:
        detector.save(temp, extra={"split": {"base": list(data.split.base),
                                             "novel": list(data.split.novel)}})
        (temp / "README.md").write_text(model_card(config, data, teacher, detector))
    return final


def _distill_targets(model: ViLDStudent, data: TrainingData, teacher, config: DistillConfig,
                     reporter: Reporter, cache_dir: Path | None, region_embeddings):
    """The student's proposals on every training image and the teacher's embeddings of them."""
    model.eval()
    proposals: list[torch.Tensor] = []
    with reporter.task("proposing regions", len(data.images)) as advance:
        for start in range(0, len(data.images), 16):
            chunk = [img.float() / 255 for img in data.images[start:start + 16]]
            proposals.extend(model.proposals(chunk, config.distill_proposals))
            advance(len(chunk))
    items = [(entry.path, boxes) for entry, boxes in zip(data.dataset.images, proposals,
                                                         strict=True)]
    embeddings = region_embeddings(teacher, items, cache_dir=cache_dir, reporter=reporter)
    return proposals, embeddings


def tune_scoring(detector: Detector, validation: CocoDataset, split: CategorySplit,
                 reporter: Reporter) -> ScoringParams:
    """Temperatures, base-score calibration and ensemble weight that maximise the harmonic
    mean of base and novel AP50 on the validation split (every candidate re-scores the same
    regions, so the grid costs COCO evaluations, not detector passes)."""
    from domainvlm.detection.evaluate import coco_metrics

    vocabulary = list(split.base) + list(split.novel)
    outputs = {}
    with reporter.task("validation regions", len(validation.images)) as advance:
        for entry in validation.images:
            with Image.open(entry.path) as img:
                outputs[entry.id] = detector.embed([img])[0]
            advance()
    best, best_value = detector.scoring, -1.0
    candidates = [dict(text_temperature=t, image_temperature=i, base_scale=s, ensemble_weight=w)
                  for t in (0.05, 0.07, 0.1) for i in (0.05, 0.1) for s in (1.0, 0.7, 0.4)
                  for w in (2 / 3, 1 / 2)]
    with reporter.task("tuning scoring on validation", len(candidates)) as advance:
        for candidate in candidates:
            params = replace(detector.scoring, **candidate)
            found = {image_id: detector.score([out], vocabulary, params)[0].detections(
                score_threshold=0.001, nms_threshold=0.5) for image_id, out in outputs.items()}
            metrics = coco_metrics(validation, found, split)
            base, novel = metrics["base"]["AP50"], metrics["novel"]["AP50"]
            value = 2 * base * novel / (base + novel) if base + novel > 0 else 0.0
            if value > best_value:
                best, best_value = params, value
            advance()
    reporter.line(f"scoring chosen on validation: temperatures {best.text_temperature} (text)"
                  f" and {best.image_temperature} (image), base scale {best.base_scale}, "
                  f"ensemble weight {best.ensemble_weight:.2f} (harmonic mean of base and "
                  f"novel AP50 {best_value:.3f})")
    return best


def model_card(config: DistillConfig, data: TrainingData, teacher, detector: Detector) -> str:
    params = sum(p.numel() for p in detector.student.parameters())
    return (f"# ViLD student ({params:,} parameters)\n\n"
            f"Distilled by `domainvlm distill` from teacher `{teacher.name}` on "
            f"{len(data.images)} images of `{config.train}`, labelled with the "
            f"{len(data.split.base)} base categories only; {len(data.split.novel)} novel "
            "categories were never box labels or text targets. Prompts are embedded with the "
            "same teacher's text tower, so any category name can be asked for; names far from "
            "the training domain will be detected poorly.\n\n"
            f"Scoring (chosen on validation): `{asdict(detector.scoring)}`.\n\n"
            "Load it with `domainvlm.detection.Detector.load(folder)`.\n")
