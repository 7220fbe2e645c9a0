"""The ViLD student: a two-stage detector whose regions live in the teacher's text space.

Built from torchvision's detection parts (a small convolutional body + `FeaturePyramidNetwork`,
`RegionProposalNetwork`, `MultiScaleRoIAlign`, the `RoIHeads` sampler) with ViLD's heads
(Gu et al., ICLR 2022) on each region's features:
- class-agnostic box regression (boxes do not depend on the words asked for);
- ViLD-text: a projection whose cosine to [learned background; category text embeddings],
  divided by a temperature, is trained with cross-entropy on *base* labels;
- ViLD-image: a second projection trained to match the teacher's embedding of the same region
  (L1), which is how objects no label named still reach the text space;
- a control projection trained like ViLD-text on *random* category embeddings, from features
  it cannot change (detached): it shows how much transfer comes from the text space itself.
At inference the two heads are ensembled by ViLD's geometric mean, the text head weighted more
for base categories and the image head for novel ones. No pretrained torchvision weights are
reachable here, so the body is trained from scratch; on real data any torchvision backbone
could replace it.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import Conv2dNormActivation, FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass(frozen=True)
class StudentConfig:
    """The architecture; everything here is saved with the weights (`vild.json`)."""

    embed_dim: int  # the teacher's embedding size: regions and prompts meet there
    frame: tuple[int, int] = (320, 240)  # (width, height) images are scaled to fit
    channels: tuple[int, ...] = (24, 48, 96, 128)  # body widths; strides 2, 4, 8, 16
    fpn_channels: int = 96
    anchor_sizes: tuple[tuple[int, ...], ...] = ((16, 24, 32), (48, 64, 96))  # stride 8, 16
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0)  # height / width
    box_head_dim: int = 256
    proposals_train: int = 300
    proposals_test: int = 300
    temperature: float = 0.07  # ViLD-text softmax temperature while training

    @classmethod
    def from_dict(cls, data: dict) -> StudentConfig:
        data = dict(data)
        for key in ("frame", "channels"):
            data[key] = tuple(data[key])
        data["anchor_sizes"] = tuple(tuple(level) for level in data["anchor_sizes"])
        data["aspect_ratios"] = tuple(data["aspect_ratios"])
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ScoringParams:
    """How region embeddings become class probabilities at inference; chosen on a validation
    split (`distill.tune_scoring`) and saved with the model."""

    text_temperature: float = 0.07
    image_temperature: float = 0.07
    ensemble_weight: float = 2 / 3  # ViLD's lambda: text head's share for base categories
    base_scale: float = 1.0  # multiplies base-category scores (< 1 calibrates them down)
    mode: str = "ensemble"  # "ensemble", "text", "image" or "control" (ablations)


@dataclass
class RegionOutputs:
    """One image's regions: refined boxes and proposals in original pixels, and the
    normalised embeddings of each head."""

    boxes: torch.Tensor
    proposals: torch.Tensor
    text: torch.Tensor = field(repr=False)
    image: torch.Tensor = field(repr=False)
    control: torch.Tensor = field(repr=False)


class ConvBody(nn.Module):
    """Four stride-2 stages of 3x3 convolutions (one in the first, at the largest size, where
    a second costs most; two after); returns the stride-8 and 16 maps."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        stages, width = [], 3
        for index, out in enumerate(channels):
            layers = [Conv2dNormActivation(width, out, 3, stride=2)]
            if index:
                layers.append(Conv2dNormActivation(out, out, 3))
            stages.append(nn.Sequential(*layers))
            width = out
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps[2:]


class Backbone(nn.Module):
    """Body + torchvision's FPN; `out_channels` as torchvision's detection parts expect."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.body = ConvBody(config.channels)
        self.fpn = FeaturePyramidNetwork(list(config.channels[2:]), config.fpn_channels)
        self.out_channels = config.fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        # Channels-last: oneDNN's CPU convolutions (backward above all) run several times
        # faster in it than in torch's default layout.
        maps = self.body(x.contiguous(memory_format=torch.channels_last))
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


class ViLDHeads(nn.Module):
    """Box deltas and the three region projections (text, image, control)."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.deltas = nn.Linear(in_features, 4)
        self.text = nn.Linear(in_features, dim)
        self.image = nn.Linear(in_features, dim)
        self.control = nn.Linear(in_features, dim)
        self.background = nn.Parameter(F.normalize(torch.randn(dim), dim=0))
        nn.init.normal_(self.deltas.weight, std=0.001)
        nn.init.zeros_(self.deltas.bias)

    def text_logits(self, features: torch.Tensor, classes: torch.Tensor,
                    temperature: float) -> torch.Tensor:
        """Cosine of each region to [background; classes] over the temperature."""
        bank = torch.cat([F.normalize(self.background, dim=0)[None], classes])
        return F.normalize(self.text(features), dim=-1) @ bank.T / temperature


class ViLDStudent(nn.Module):
    """The detector; `losses` trains it, `regions` runs it."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        width, height = config.frame
        self.transform = GeneralizedRCNNTransform(min(width, height), max(width, height),
                                                  IMAGENET_MEAN, IMAGENET_STD)
        self.backbone = Backbone(config).to(memory_format=torch.channels_last)
        anchors = AnchorGenerator(config.anchor_sizes,
                                  (config.aspect_ratios,) * len(config.anchor_sizes))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(self.backbone.out_channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256,
            positive_fraction=0.5,
            pre_nms_top_n={"training": 2 * config.proposals_train,
                           "testing": 2 * config.proposals_test},
            post_nms_top_n={"training": config.proposals_train,
                            "testing": config.proposals_test},
            nms_thresh=0.7)
        levels = [str(i) for i in range(len(config.anchor_sizes))]
        pool = MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2)
        box_head = TwoMLPHead(self.backbone.out_channels * 7 * 7, config.box_head_dim)
        # RoIHeads for torchvision's proposal sampling and box coding; its predictor is ours.
        self.roi_heads = RoIHeads(pool, box_head, ViLDHeads(config.box_head_dim,
                                                             config.embed_dim),
                                  fg_iou_thresh=0.5, bg_iou_thresh=0.5,
                                  batch_size_per_image=128, positive_fraction=0.25,
                                  bbox_reg_weights=None, score_thresh=0.0, nms_thresh=0.5,
                                  detections_per_img=100)

    @property
    def heads(self) -> ViLDHeads:
        return self.roi_heads.box_predictor

    def _features(self, images: list[torch.Tensor],
                  targets: list[dict[str, torch.Tensor]] | None = None):
        image_list, targets = self.transform(images, targets)
        return image_list, targets, self.backbone(image_list.tensors)

    def _region_features(self, features, boxes: list[torch.Tensor],
                         image_list: ImageList) -> torch.Tensor:
        pooled = self.roi_heads.box_roi_pool(features, boxes, image_list.image_sizes)
        return self.roi_heads.box_head(pooled)

    def losses(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
               classes: torch.Tensor, *, control_classes: torch.Tensor | None = None,
               distill_boxes: list[torch.Tensor] | None = None,
               distill_targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """ViLD's training losses for a batch.

        `targets[i]["labels"]` index `classes` from 1 (0 is background); `classes` holds the
        base categories' text embeddings only, so nothing else can be a training target.
        `distill_boxes` (original pixels) and the teacher's `distill_targets` (their
        concatenation in the same order) add ViLD-image's L1 loss.
        """
        sizes = [img.shape[-2:] for img in images]
        image_list, targets, features = self._features(images, targets)
        proposals, rpn_losses = self.rpn(image_list, features, targets)
        proposals, _, labels, regression = self.roi_heads.select_training_samples(
            proposals, targets)
        region = self._region_features(features, proposals, image_list)
        heads = self.heads
        logits = heads.text_logits(region, classes, self.config.temperature)
        num = classes.shape[0] + 1
        deltas = heads.deltas(region).repeat(1, num)
        loss_text, loss_box = fastrcnn_loss(logits, deltas, labels, regression)
        out = {**rpn_losses, "loss_text": loss_text, "loss_box": loss_box}
        if control_classes is not None:
            bank = torch.cat([F.normalize(heads.background.detach(), dim=0)[None],
                              control_classes])
            control = F.normalize(heads.control(region.detach()), dim=-1) @ bank.T
            out["loss_control"] = F.cross_entropy(control / self.config.temperature,
                                                  torch.cat(labels))
        if distill_boxes is not None and distill_targets is not None:
            scaled = [resize_boxes(b, list(s), list(n))
                      for b, s, n in zip(distill_boxes, sizes, image_list.image_sizes,
                                             strict=True)]
            embedded = F.normalize(heads.image(
                self._region_features(features, scaled, image_list)), dim=-1)
            out["loss_image"] = F.l1_loss(embedded, distill_targets, reduction="sum") / max(
                len(distill_targets), 1)
        return out

    @torch.inference_mode()
    def regions(self, images: list[torch.Tensor]) -> list[RegionOutputs]:
        """Every proposal of each image (CHW float in [0, 1]), refined and embedded."""
        sizes = [tuple(img.shape[-2:]) for img in images]
        image_list, _, features = self._features(images)
        proposals, _ = self.rpn(image_list, features)
        counts = [len(p) for p in proposals]
        region = self._region_features(features, proposals, image_list)
        heads = self.heads
        deltas = heads.deltas(region)
        refined = self.roi_heads.box_coder.decode(deltas, proposals).reshape(-1, 4)
        embeddings = {name: F.normalize(getattr(heads, name)(region), dim=-1)
                      for name in ("text", "image", "control")}
        outputs, start = [], 0
        for count, props, resized, original in zip(counts, proposals, image_list.image_sizes,
                                                   sizes, strict=True):
            stop = start + count
            boxes = box_ops.clip_boxes_to_image(refined[start:stop], resized)
            outputs.append(RegionOutputs(
                boxes=resize_boxes(boxes, list(resized), list(original)),
                proposals=resize_boxes(props, list(resized), list(original)),
                **{name: value[start:stop] for name, value in embeddings.items()}))
            start = stop
        return outputs

    def proposals(self, images: list[torch.Tensor], top: int) -> list[torch.Tensor]:
        """The `top` proposals of each image by objectness, in original pixels."""
        with torch.inference_mode():
            sizes = [tuple(img.shape[-2:]) for img in images]
            image_list, _, features = self._features(images)
            proposals, _ = self.rpn(image_list, features)
        return [resize_boxes(p[:top], list(resized), list(original)).clone()
                for p, resized, original in zip(proposals, image_list.image_sizes, sizes,
                                                    strict=True)]


def control_embeddings(names: Sequence[str], dim: int) -> torch.Tensor:
    """A random unit vector per name, fixed by the name alone: the control's "text space",
    which knows each name apart but nothing of what it means."""
    rows = []
    for name in names:
        generator = torch.Generator().manual_seed(zlib.crc32(name.lower().encode()))
        rows.append(torch.randn(dim, generator=generator))
    return F.normalize(torch.stack(rows), dim=-1)


def score_regions(out: RegionOutputs, heads: ViLDHeads, prompts: torch.Tensor,
                  is_base: torch.Tensor, params: ScoringParams) -> torch.Tensor:
    """Class probabilities (K, C) of one image's regions for `prompts` (C, D) text embeddings;
    `is_base` (C,) marks prompts that were training categories (ViLD's ensemble weights). In
    "control" mode `prompts` are the names' `control_embeddings`."""
    background = F.normalize(heads.background, dim=0)[None]

    def with_background(embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
        logits = embeddings @ torch.cat([background, prompts]).T / temperature
        return logits.softmax(-1)[:, 1:]

    if params.mode == "control":
        return with_background(out.control, params.text_temperature)
    text = with_background(out.text, params.text_temperature)
    if params.mode == "text":
        probs = text
    else:
        image = (out.image @ prompts.T / params.image_temperature).softmax(-1)
        if params.mode == "image":
            # The image head never learned background: borrow the text head's verdict.
            probs = image * (1 - text.sum(-1, keepdim=True))
        else:
            weight = torch.where(is_base, params.ensemble_weight, 1 - params.ensemble_weight)
            probs = text.pow(weight) * image.pow(1 - weight)
    return probs * torch.where(is_base, params.base_scale, 1.0)
