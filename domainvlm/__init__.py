"""domainvlm: adapt pretrained vision-language models to hospital imaging and robot perception.

The Python API, the same as the CLI's commands::

    from domainvlm import FinetuneConfig, finetune, evaluate, answer, merge, load_model

    cfg = FinetuneConfig(model="llava-hf/llava-1.5-7b-hf", data="train.jsonl",
                         output="runs/chest", eval_data="val.jsonl", epochs=3)
    result = finetune(cfg)                                   # result.adapter: the folder
    metrics = evaluate(result.adapter, "test.jsonl", output="runs/chest-eval")
    text = answer(result.adapter, "scan.png", "Is there a nodule?")
    merged = merge(result.adapter, "runs/chest-merged")      # a plain transformers model

DICOM, de-identification and VQA building are in `domainvlm.medical`.

The names are loaded on first use: torch, transformers and peft are imported by the modules
that need them, so that ``import domainvlm`` and ``domainvlm --help`` stay fast.
"""

from importlib import import_module as _import_module
from typing import TYPE_CHECKING
from typing import Any as _Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # what editors and type checkers see; at run time, __getattr__ below
    from domainvlm.adapter_io import load_with_adapter
    from domainvlm.adapter_io import merge_adapter as merge
    from domainvlm.ask import answer
    from domainvlm.evaluation.run import evaluate
    from domainvlm.loading import load_model
    from domainvlm.train.config import FinetuneConfig
    from domainvlm.train.loop import finetune

# public name -> (module, name there)
_EXPORTS = {
    "FinetuneConfig": ("domainvlm.train.config", "FinetuneConfig"),
    "finetune": ("domainvlm.train.loop", "finetune"),
    "evaluate": ("domainvlm.evaluation.run", "evaluate"),
    "load_model": ("domainvlm.loading", "load_model"),
    "load_with_adapter": ("domainvlm.adapter_io", "load_with_adapter"),
    "merge": ("domainvlm.adapter_io", "merge_adapter"),
    "answer": ("domainvlm.ask", "answer"),
}

__all__ = ["FinetuneConfig", "finetune", "evaluate", "load_model", "load_with_adapter", "merge",
           "answer"]


def __getattr__(name: str) -> _Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'domainvlm' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(_import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    """The public names and the submodules loaded so far, as a notebook completes them."""
    return sorted({*__all__, *(n for n in globals() if not n.startswith("_")
                               and n != "TYPE_CHECKING")})
