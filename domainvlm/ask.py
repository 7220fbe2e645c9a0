"""Ask a model (or an adapter on its base) about images: `answer` in Python, `domainvlm ask`.

The questions go through exactly the prompt layout and greedy generation that `evaluate`
uses (`domainvlm.evaluation.generate`), so an answer here is the prediction `evaluate` writes
for the same images and question. Scans are rendered by the registered image readers
(`domainvlm.image_readers`) with the view the model recorded from its training data.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from domainvlm.adapter_io import adapter_base, is_adapter_folder, load_with_adapter
from domainvlm.data.prompting import PromptFormat
from domainvlm.data.records import Record
from domainvlm.data.views import recorded_views
from domainvlm.errors import ConfigError, DataError
from domainvlm.evaluation.generate import generate_answers
from domainvlm.image_readers import InputImages, parse_view, read_inputs
from domainvlm.loading import LoadedModel

ImageInput = Any  # a path (str / Path) to an image, a DICOM file or series folder; a PIL image
ModelInput = str | Path | LoadedModel
ViewInput = str | Mapping[str, Any] | Any | None  # see image_readers.parse_view


@dataclass
class Asked:
    """The answers and what the model was shown (what `domainvlm ask --json` prints)."""

    questions: list[str]
    answers: list[str]
    inputs: list[InputImages]
    model: str  # the model or adapter folder, or hub id
    base: str | None  # the base an adapter ran on; None for a plain model
    seconds: float  # the whole call: reading images, loading, answering

    def summary(self) -> dict[str, Any]:
        one = len(self.questions) == 1
        return {"question": self.questions[0] if one else self.questions,
                "answer": self.answers[0] if one else self.answers,
                "model": self.model, "base": self.base,
                "images": [item.summary() for item in self.inputs],
                "seconds": round(self.seconds, 3)}


def ask(model: ModelInput, images: ImageInput | Sequence[ImageInput],
        questions: Sequence[str], *, base: str | Path | None = None, view: ViewInput = None,
        max_new_tokens: int = 32, batch_size: int = 8,
        ignore_base_mismatch: bool = False) -> Asked:
    """Answer each of `questions` about all of `images` together; see `answer`."""
    started = time.perf_counter()
    refs = list(images) if isinstance(images, list | tuple) else [images]
    if not refs:
        raise DataError("no image given; pass at least one image, DICOM file or series folder")
    if not questions:
        raise DataError("no question given")
    for number, question in enumerate(questions, start=1):
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"question {number} is empty or not text; ask a question")
    if max_new_tokens < 1 or batch_size < 1:
        raise ConfigError(f"max_new_tokens ({max_new_tokens}) and batch_size ({batch_size}) "
                          "must be at least 1")
    if isinstance(model, LoadedModel) and base is not None:
        raise ConfigError("`base` applies when `model` is a path or hub id; a loaded model "
                          "already has its base (load_with_adapter(adapter, base=...))")
    source = model.source if isinstance(model, LoadedModel) else str(model)
    recorded = recorded_views(source) if Path(source).is_dir() else None
    # Images first: a missing file should not wait for a large model to load.
    inputs = read_inputs(refs, view=parse_view(view), recorded=recorded)
    loaded = model if isinstance(model, LoadedModel) else load_with_adapter(
        source, base=base, ignore_base_mismatch=ignore_base_mismatch)
    shown = [image for item in inputs for image in item.images]
    if len(shown) > 1 and not loaded.family.multi_image:
        raise DataError(f"{len(shown)} images, but the {loaded.family.name} family takes one "
                        "image per prompt")
    fmt = PromptFormat.from_processor(loaded.processor, loaded.family)
    records = [Record(images=shown, question=question.strip(), answer="",
                      source=f"question {number}")
               for number, question in enumerate(questions, start=1)]
    answers = generate_answers(loaded.model, fmt, records, batch_size=batch_size,
                               max_new_tokens=max_new_tokens)
    adapter = is_adapter_folder(source)
    return Asked(list(questions), answers, inputs, source,
                 (str(base) if base else adapter_base(Path(source))) if adapter else None,
                 time.perf_counter() - started)


@overload
def answer(model: ModelInput, images: ImageInput | Sequence[ImageInput], question: str, *,
           base: str | Path | None = None, view: ViewInput = None, max_new_tokens: int = 32,
           ignore_base_mismatch: bool = False) -> str: ...


@overload
def answer(model: ModelInput, images: ImageInput | Sequence[ImageInput],
           question: Sequence[str], *, base: str | Path | None = None, view: ViewInput = None,
           max_new_tokens: int = 32, ignore_base_mismatch: bool = False) -> list[str]: ...


def answer(model, images, question, *, base=None, view=None, max_new_tokens=32,
           ignore_base_mismatch=False):
    """The model's greedy answer to `question` about `images`, as `evaluate` would give it.

    `model`: an adapter folder (run on the base it was trained on, or `base`), a model folder
    or hub id, or a `LoadedModel` from `load_with_adapter` / `load_model` (load once, ask
    many times). `images`: one image or a list, ALL shown with the question, in order (as
    `--image` repeated); each an image file, a PIL image, or a DICOM file or series folder,
    rendered into views with the view recorded with the adapter's training data (`view`
    fields, e.g. "strategy=slabs,count=4" or a `domainvlm.medical.ViewSpec`, override it).
    `question`: a string gives a string; a list of questions gives a list of answers, each
    question asked on its own about the same images. For other images, call again.

    Example::

        from domainvlm import answer

        answer("runs/chest/adapter", "scan.png", "Is there a nodule?")          # 'Yes'
        answer("runs/chest/adapter", ["prior.png", "now.png"], "Has it grown?")  # two images
        answer("runs/ct/adapter", "dicom/series-3/", ["Is there a nodule?", "Which side?"])
    """
    single = isinstance(question, str)
    asked = ask(model, images, [question] if single else list(question), base=base, view=view,
                max_new_tokens=max_new_tokens, ignore_base_mismatch=ignore_base_mismatch)
    return asked.answers[0] if single else asked.answers
