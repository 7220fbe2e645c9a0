"""Adapters from a real fine-tune: plain PEFT loads them, merging keeps the logits, guards hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from testkit import ALL_FAMILIES
from transformers import AutoModelForImageTextToText, AutoProcessor

from domainvlm.adapter_io import merge_adapter
from domainvlm.data.images import open_image
from domainvlm.data.prompting import PromptFormat
from domainvlm.data.records import load_records
from domainvlm.errors import ModelLoadError, OutputExistsError
from domainvlm.families import family_for
from domainvlm.loading import load_config
from domainvlm.train.config import build_config
from domainvlm.train.loop import finetune


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads and lose much when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tiny_models, shapes_data, tmp_path_factory):
    """family -> adapter folder of a 3-step fine-tune, run once per family for this module."""
    runs = {}

    def get(family):
        if family not in runs:
            root = tmp_path_factory.mktemp(f"adapter-{family}")
            cfg = build_config(dict(model=str(tiny_models(family)), data=str(shapes_data["train"]),
                                    output=root / "run", max_steps=3, batch_size=4,
                                    learning_rate=5e-3, lora_dropout=0.0,
                                    cache_dir=root / "cache"))
            runs[family] = finetune(cfg).adapter
        return runs[family]

    return get


def batch(folder, shapes_data):
    """A real processed, left-padded batch of two questions of different lengths."""
    processor = AutoProcessor.from_pretrained(folder)
    family = family_for(load_config(str(folder))[1].model_type)
    fmt = PromptFormat.from_processor(processor, family)
    records = load_records(shapes_data["eval"])[:2]
    assert len(records[0].question) != len(records[1].question)
    images = [[open_image(ref, r.source) for ref in r.images] for r in records]
    processor.tokenizer.padding_side = "left"
    prompts = [fmt.prompt(r.question, 1) for r in records]
    return processor(**fmt.processor_inputs(prompts, images), padding=True, return_tensors="pt")


def logits(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def with_adapter(base, adapter):
    return PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base),
                                     str(adapter))


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_trained_adapter_loads_with_plain_peft_and_changes_the_model(
        tiny_models, shapes_data, trained, family):
    base, adapter = tiny_models(family), trained(family)
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and all(w.abs().max() > 0 for w in lora_b)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).resolve() == base.resolve()

    model = with_adapter(base, adapter)
    assert isinstance(model, PeftModel)
    inputs = batch(base, shapes_data)
    tuned = logits(model, inputs)
    plain = logits(AutoModelForImageTextToText.from_pretrained(base), inputs)
    assert torch.isfinite(tuned).all()
    assert (tuned - plain).abs().max() > 1e-3


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_merged_folder_is_a_plain_model_with_the_adapted_logits(
        tiny_models, shapes_data, trained, family, tmp_path):
    base, adapter = tiny_models(family), trained(family)
    merged = merge_adapter(adapter, tmp_path / "merged")
    assert merged == tmp_path / "merged"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no temp folder left

    # Every model and processor file of the base is there, and no adapter file.
    base_files = {p.name for p in base.iterdir()} - {"README.md"}
    assert base_files <= {p.name for p in merged.iterdir()}
    assert not (merged / "adapter_config.json").exists()
    assert not any("lora" in key for key in load_file(str(merged / "model.safetensors")))

    base_processor, merged_processor = (AutoProcessor.from_pretrained(f) for f in (base, merged))
    assert type(merged_processor) is type(base_processor)
    assert merged_processor.chat_template == base_processor.chat_template
    if family != "paligemma":  # the one family that prompts without a chat template
        assert merged_processor.chat_template

    inputs = batch(merged, shapes_data)
    reference = batch(base, shapes_data)
    assert inputs.keys() == reference.keys()
    for key in inputs:
        assert torch.equal(inputs[key], reference[key]), key

    model = AutoModelForImageTextToText.from_pretrained(merged)
    assert not isinstance(model, PeftModel)
    merged_logits = logits(model, inputs)
    adapted = logits(with_adapter(base, adapter), inputs)
    plain = logits(AutoModelForImageTextToText.from_pretrained(base), inputs)
    torch.testing.assert_close(merged_logits, adapted, atol=1e-4, rtol=0)
    assert (merged_logits - plain).abs().max() > 1e-3


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_merge_into_a_non_empty_folder_needs_overwrite(trained, family, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not empty.*--overwrite"):
        merge_adapter(trained(family), output)
    assert [p.name for p in output.iterdir()] == ["keep.txt"]
    assert (output / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_replaces_an_earlier_merge_only(tiny_models, trained, tmp_path):
    output = tmp_path / "out"
    merge_adapter(trained("llava"), output)
    (output / "stale.txt").write_text("left by the earlier merge's folder")
    merge_adapter(trained("llava"), output, overwrite=True)
    assert not (output / "stale.txt").exists()
    assert AutoModelForImageTextToText.from_pretrained(output) is not None
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="did not write"):
        merge_adapter(trained("llava"), mine, overwrite=True)
    assert (mine / "keep.txt").read_text() == "mine"


NOT_ADAPTERS = [(family, "base model") for family in ALL_FAMILIES] + [
    ("llava", "run folder"), ("llava", "empty folder"), ("llava", "missing folder")]


@pytest.mark.parametrize(("family", "what"), NOT_ADAPTERS)
def test_merging_a_folder_that_is_not_an_adapter_is_an_error(
        tiny_models, trained, family, what, tmp_path):
    (tmp_path / "empty").mkdir()
    source = {"base model": lambda: tiny_models(family),
              "run folder": lambda: trained(family).parent,
              "empty folder": lambda: tmp_path / "empty",
              "missing folder": lambda: tmp_path / "missing"}[what]()
    with pytest.raises(ModelLoadError, match="not an adapter folder"):
        merge_adapter(source, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
