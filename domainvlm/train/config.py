"""The fine-tuning config: one flat pydantic model behind the CLI flags, YAML files and API.

Keys map one to one onto flags (`lora_r` is `--lora-r`), so an error can name both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from domainvlm.errors import ConfigError

Component = Literal["language", "vision", "projector"]


class FinetuneConfig(BaseModel):
    """Everything a fine-tuning run needs; validated where it is built (a bad value raises
    ConfigError naming the key). The fields are the `domainvlm finetune` flags and YAML keys.

    Example::

        from domainvlm import FinetuneConfig, finetune

        cfg = FinetuneConfig(model="llava-hf/llava-1.5-7b-hf", data="train.jsonl",
                             output="runs/chest", eval_data="val.jsonl", epochs=3)
        result = finetune(cfg)
    """

    # inf or nan in a float setting (a learning rate of inf, a YAML `.nan`) would only show as
    # a run of NaN losses: refuse it before any work.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    model: str = Field(description="Hub id or local folder of an image-text-to-text model")
    data: str = Field(description="Training data: .jsonl, LLaVA-style .json or a dataset folder")
    output: Path = Field(description="Run folder: adapter, checkpoints, logs")
    eval_data: str | None = Field(None, description="Held-out data for periodic eval loss")
    method: Literal["lora", "dora", "qlora", "full"] = Field(
        "lora", description="full trains every weight and saves a whole model (pretraining)")
    lora_r: int = Field(16, gt=0, description="LoRA rank")
    lora_alpha: int | None = Field(None, gt=0, description="LoRA alpha (default 2 x rank)")
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_targets: list[Component] = Field(
        default_factory=lambda: ["language"],
        description="Where LoRA goes: language, vision, projector (never Conv layers)",
    )
    train_fully: list[Component] = Field(
        default_factory=list,
        description="With LoRA/DoRA/QLoRA: parts trained in full beside the adapter and saved "
        "in it (PEFT modules_to_save), e.g. the projector, as LLaVA-1.5's LoRA recipe does",
    )
    frozen: list[Component] = Field(
        default_factory=list,
        description="With method full: parts kept as they are, weights and batch-norm "
        "statistics (e.g. a pretrained vision tower); the LM head belongs to no part and trains",
    )
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many steps")
    batch_size: int = Field(8, gt=0, description="Samples per optimizer step (all processes); "
                            "with --pack-questions, images with all their questions")
    micro_batch_size: int | None = Field(
        None, gt=0, description="Samples per forward pass per process; the rest is accumulated"
    )
    learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float | None = Field(1.0, gt=0)
    max_length: int = Field(2048, gt=0, description="Longest prompt + answer; never cut")
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    pack_questions: bool = Field(
        False, description="Train all questions about one image as one sequence, its image "
        "tokens once (each row still attends only to the image and itself, so its loss is "
        "unchanged); --batch-size then counts images. LLaVA and FastVLM families")
    vision_cache: Literal["auto", "off"] = Field(
        "auto", description="Keep frozen image features in memory instead of recomputing them"
    )
    vision_cache_max_gb: float = Field(2.0, gt=0)
    min_pixels: int | None = Field(None, gt=0, description="Qwen-VL image resolution floor")
    max_pixels: int | None = Field(None, gt=0, description="Qwen-VL image resolution cap")
    eval_every: int | None = Field(None, gt=0, description="Steps between eval-loss checks")
    save_every: int | None = Field(None, gt=0, description="Steps between checkpoints")
    keep_checkpoints: int = Field(2, gt=0)
    cache_dir: Path | None = None
    resume: bool = False
    overwrite: bool = False

    @field_validator("model", "data", "eval_data", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        """A `Path` (or any path-like) where a model or data path is meant."""
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if not self.lora_targets:
            raise ValueError("`lora_targets` needs at least one of language, vision, projector")
        if self.micro_batch_size and self.micro_batch_size > self.batch_size:
            raise ValueError(
                f"`micro_batch_size` ({self.micro_batch_size}) cannot exceed `batch_size` "
                f"({self.batch_size})"
            )
        if self.frozen and self.method != "full":
            raise ValueError("`frozen` applies to method full; with LoRA, choose the trained "
                             "parts with `lora_targets`")
        if self.train_fully and self.method == "full":
            raise ValueError("`train_fully` is for LoRA methods; with method full every part "
                             "not in `frozen` trains")
        both = sorted(set(self.train_fully) & set(self.lora_targets))
        if both:
            raise ValueError(f"{', '.join(both)}: in both `lora_targets` and `train_fully`; a "
                             "part gets either LoRA or full training")
        self.train_fully = sorted(set(self.train_fully))
        self.frozen = sorted(set(self.frozen))  # one spelling, one fingerprint
        if len(self.frozen) == 3:
            raise ValueError("`frozen` names every part: nothing would train")
        if self.resume and self.overwrite:
            raise ValueError("`resume` and `overwrite` exclude each other; pick one")
        return self

    @property
    def alpha(self) -> int:
        return self.lora_alpha or 2 * self.lora_r

    @property
    def resolution(self) -> dict[str, int]:
        return {k: v for k, v in (("min_pixels", self.min_pixels),
                                  ("max_pixels", self.max_pixels)) if v is not None}

    def fingerprint_fields(self) -> dict:
        """The settings that define a run: a different value means a different run."""
        return self.model_dump(mode="json", exclude={"resume", "overwrite", "cache_dir"})


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def build_config(values: dict, source: str = "options") -> FinetuneConfig:
    """Validate `values`; errors name the key as flag and YAML key, with the bad value."""
    try:
        return FinetuneConfig(**values)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or "config"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = f"unknown key; valid keys: {', '.join(FinetuneConfig.model_fields)}"
            got = f" (got {error['input']!r})" if error["loc"] and error["type"] != "missing" \
                else ""
            where = f"`{flag(key)}` / `{key}`" if error["loc"] else "config"
            lines.append(f"{where}: {message}{got}")
        raise ConfigError(f"invalid {source}: " + "; ".join(lines)) from None


def load_yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return values
