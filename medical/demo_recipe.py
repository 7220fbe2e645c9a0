"""The demo's recipe as data: `recipes/ct-demo.yaml` holds every number, this module checks it.

torchtune's split: the code (`domainvlm.medical.demo`) is the recipe's steps, a YAML file its
settings. Every key is required (the shipped file is the only place a default lives), save
the finetune section's, which default as `domainvlm finetune`'s do; unknown keys, wrong types
and non-finite numbers are refused, and the error names the file and key.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from domainvlm.errors import ConfigError
from domainvlm.medical.cohort_questions import QUESTION_IDS
from domainvlm.medical.vqa import Plane, Strategy, ViewSpec
from domainvlm.train.config import FinetuneConfig

DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "ct-demo.yaml"

# Strict: YAML has types of its own, so "32" or `true` where a number belongs is a mistake.
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True,
                     protected_namespaces=())


class CohortRecipe(BaseModel):
    model_config = _STRICT

    patients: int = Field(ge=10, description="train, validation and test each need patients")
    slices: int = Field(ge=4)
    matrix: list[int] = Field(min_length=2, max_length=2, description="rows, columns")


class ViewRecipe(BaseModel):
    """`ViewSpec` less `image_size`, which the base model decides."""

    model_config = _STRICT

    strategy: Strategy
    count: int
    window: str
    plane: Plane
    layout: str

    @model_validator(mode="after")
    def _check(self) -> ViewRecipe:
        try:
            self.spec(None)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def spec(self, image_size: int | None) -> ViewSpec:
        return ViewSpec(**self.model_dump(), image_size=image_size)


class SplitRecipe(BaseModel):
    """Fractions of patients; the demo trains on train, validates on val, scores test."""

    model_config = _STRICT

    train: float = Field(gt=0)
    val: float = Field(gt=0)
    test: float = Field(gt=0)

    @model_validator(mode="after")
    def _check(self) -> SplitRecipe:
        if not math.isclose(self.train + self.val + self.test, 1.0):
            raise ValueError(f"fractions must sum to 1, got {self.train} + {self.val} + "
                             f"{self.test}")
        return self


class EvaluationRecipe(BaseModel):
    model_config = _STRICT

    batch_size: int = Field(gt=0)
    max_new_tokens: int = Field(gt=0)


# What the demo sets itself, per run: never in the recipe.
SET_BY_DEMO = ("model", "data", "eval_data", "output", "seed", "eval_every", "cache_dir",
               "resume", "overwrite")
# `domainvlm finetune`'s keys with their types and bounds (one home: FinetuneConfig), less
# those; its cross-key rules run in DemoRecipe's check.
FinetuneRecipe = create_model(
    "FinetuneRecipe", __config__=_STRICT,
    **{name: (info.annotation, info) for name, info in FinetuneConfig.model_fields.items()
       if name not in SET_BY_DEMO})


class DemoRecipe(BaseModel):
    """Every setting of `domainvlm demo` that decides its results (see recipes/ct-demo.yaml)."""

    model_config = _STRICT

    model: str | None = Field(min_length=1)
    nano_input_px: int = Field(gt=0)
    seed: int
    cohort: CohortRecipe
    view: ViewRecipe
    split: SplitRecipe
    repeats: dict[str, Annotated[int, Field(ge=1)]]
    finetune: FinetuneRecipe  # type: ignore[valid-type]
    eval_loss_checks: int = Field(gt=0)
    evaluation: EvaluationRecipe
    selection_seeds: list[int]

    @model_validator(mode="after")
    def _check(self) -> DemoRecipe:
        unknown = sorted(set(self.repeats) - set(QUESTION_IDS))
        if unknown:
            raise ValueError(f"repeats: no question {', '.join(unknown)}; the cohort asks "
                             f"{', '.join(QUESTION_IDS)}")
        try:  # the cross-key rules (micro-batch within batch, a part in one list...)
            FinetuneConfig(**self.finetune_values(), model="-", data="-", output=Path("-"))
        except ValidationError as exc:
            raise ValueError("finetune: " + "; ".join(
                e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
        return self

    def finetune_values(self) -> dict[str, Any]:
        """The finetune section as given (unset keys keep FinetuneConfig's defaults)."""
        return self.finetune.model_dump(exclude_unset=True)


# Command-line flag -> the recipe key it overrides.
FLAGS = {"--model": "model", "--patients": "cohort.patients", "--seed": "seed",
         "--epochs": "finetune.epochs", "--learning-rate": "finetune.learning_rate"}


def load_recipe(path: Path = DEFAULT_RECIPE, flags: dict[str, Any] | None = None) -> DemoRecipe:
    """The recipe in `path`, with `flags` ({"--epochs": 6.0}; None: the file's value) over it.

    ConfigError names the file and key, or the flag, with the bad value.
    """
    from domainvlm.train.config import load_yaml

    values = load_yaml(Path(path))
    given = {flag: value for flag, value in (flags or {}).items() if value is not None}
    for flag in ("--epochs", "--learning-rate"):
        value = given.get(flag)
        if value is not None and not (isinstance(value, int | float) and math.isfinite(value)
                                      and value > 0):
            raise ConfigError(f"`{flag}` must be a finite number above 0, got {value!r}")
    for flag, value in given.items():
        *parents, key = FLAGS[flag].split(".")
        section: Any = values
        for parent in parents:  # a section missing or not a mapping: validation says so
            section = section.get(parent) if isinstance(section, dict) else None
        if isinstance(section, dict):
            section[key] = value
    try:
        return DemoRecipe.model_validate(values)
    except ValidationError as exc:
        by_key = {key: flag for flag, key in FLAGS.items() if flag in given}
        raise ConfigError(f"invalid recipe {path}: " + "; ".join(
            _problem(error, by_key) for error in exc.errors())) from None


def _problem(error: Any, by_key: dict[str, str]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = f"unknown key; valid keys there: {', '.join(_keys(error['loc'][:-1]))}"
    where = f"`{by_key[key]}`" if key in by_key else f"`{key}`" if key else "recipe"
    shown = error["type"] not in ("missing", "extra_forbidden") and key and not isinstance(
        error["input"], dict | list)
    return f"{where}: {message}" + (f" (got {error['input']!r})" if shown else "")


def _keys(loc: tuple) -> list[str]:
    """The keys of the recipe section at `loc` (a section's name, then its keys)."""
    section: Any = DemoRecipe
    for part in loc:
        section = section.model_fields[part].annotation
    return list(section.model_fields)
