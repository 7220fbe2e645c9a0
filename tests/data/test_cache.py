"""The processed-data cache: hits are exact, every input that matters is in the key."""

from __future__ import annotations

import importlib.metadata
import random
import sys
from pathlib import Path

import pytest
import torch
from testkit import ALL_FAMILIES
from transformers import AutoConfig, AutoProcessor

from domainvlm.data.cache import (
    ENCODING_MODULES,
    code_fingerprint,
    data_fingerprint,
    load_or_encode,
)
from domainvlm.data.encode import encode_records
from domainvlm.data.prompting import PromptFormat
from domainvlm.data.records import Record
from domainvlm.families import family_for
from domainvlm.nano.shapes_world import Shape, draw_scene
from domainvlm.tiny import build_tiny_model

MAX_LENGTH = 512


def prompt_format(folder: Path) -> PromptFormat:
    family = family_for(AutoConfig.from_pretrained(folder).model_type)
    return PromptFormat.from_processor(AutoProcessor.from_pretrained(folder), family)


def write_scene(path: Path, colour: str, side: str = "left") -> Path:
    draw_scene([Shape(colour, "square", side)], 64, random.Random(0)).save(path)
    return path


@pytest.fixture
def records(tmp_path) -> list[Record]:
    images = tmp_path / "images"
    images.mkdir()
    a = write_scene(images / "a.png", "red")
    b = write_scene(images / "b.png", "blue", "right")
    return [Record([a], "What colour is the square?", "red", "t.jsonl:1"),
            Record([b], "Which side?", "right", "t.jsonl:2"),
            Record([a, b], "Same colour?", "no", "t.jsonl:3")]


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def llava(tiny_models) -> PromptFormat:
    return prompt_format(tiny_models("llava"))


def assert_same_samples(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].dtype == y[key].dtype, key
            assert torch.equal(x[key], y[key]), key


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_second_call_is_a_hit_with_identical_tensors(records, llava, cache):
    first, hit_first = load_or_encode(records, llava, MAX_LENGTH, cache_dir=cache)
    assert hit_first is False
    key = data_fingerprint(records, llava, MAX_LENGTH)
    assert files(cache) == [f"{key}.pt"]
    calls = []
    second, hit_second = load_or_encode(records, llava, MAX_LENGTH, cache_dir=cache,
                                        progress=lambda: calls.append(1))
    assert hit_second is True
    assert calls == []  # nothing was encoded again
    assert_same_samples(first, second)
    assert {"input_ids", "labels", "pixel_values"} <= set(second[0])


def test_a_reloaded_processor_keeps_the_key(records, llava, tiny_models, tmp_path):
    """Same processor files, loaded again or saved with other model weights: same key."""
    key = data_fingerprint(records, llava, MAX_LENGTH)
    assert data_fingerprint(records, prompt_format(tiny_models("llava")), MAX_LENGTH) == key
    other_weights = build_tiny_model("llava", tmp_path / "llava-seed1", seed=1)
    assert data_fingerprint(records, prompt_format(other_weights), MAX_LENGTH) == key


def change_image_bytes(records, fmt, max_length, tmp_path):
    write_scene(Path(records[1].images[0]), "green", "right")  # same path, new pixels
    return records, fmt, max_length


def change_answer(records, fmt, max_length, tmp_path):
    records[0].answer = "dark red"
    return records, fmt, max_length


def change_question(records, fmt, max_length, tmp_path):
    records[2].question = "Same shape?"
    return records, fmt, max_length


def change_image_list(records, fmt, max_length, tmp_path):
    records[2].images = records[2].images[::-1]
    return records, fmt, max_length


def change_max_length(records, fmt, max_length, tmp_path):
    return records, fmt, max_length + 1


def change_resolution(records, fmt, max_length, tmp_path):
    fmt.processor.image_processor.size = {"shortest_edge": 48}
    fmt.processor.image_processor.crop_size = {"height": 48, "width": 48}
    return records, fmt, max_length


def change_family(records, fmt, max_length, tmp_path):
    folder = build_tiny_model("llava-next", tmp_path / "llava-next")
    return records, prompt_format(folder), max_length


def drop_record(records, fmt, max_length, tmp_path):
    return records[:2], fmt, max_length


@pytest.mark.parametrize("change", [
    change_image_bytes, change_answer, change_question, change_image_list, change_max_length,
    change_resolution, change_family, drop_record,
])
def test_key_follows_every_input(records, tiny_models, cache, tmp_path, change):
    fmt = prompt_format(tiny_models("llava"))  # a fresh one: some changes edit the processor
    _, hit = load_or_encode(records, fmt, MAX_LENGTH, cache_dir=cache)
    assert not hit
    key = data_fingerprint(records, fmt, MAX_LENGTH)
    records, fmt, max_length = change(records, fmt, MAX_LENGTH, tmp_path)
    assert data_fingerprint(records, fmt, max_length) != key
    after, hit = load_or_encode(records, fmt, max_length, cache_dir=cache)
    assert not hit
    assert len(files(cache)) == 2
    again, hit = load_or_encode(records, fmt, max_length, cache_dir=cache)
    assert hit
    assert_same_samples(after, again)


def test_changed_image_bytes_give_new_tensors(records, llava, cache):
    before, _ = load_or_encode(records, llava, MAX_LENGTH, cache_dir=cache)
    write_scene(Path(records[0].images[0]), "yellow")
    after, hit = load_or_encode(records, llava, MAX_LENGTH, cache_dir=cache)
    assert not hit
    assert not torch.equal(before[0]["pixel_values"], after[0]["pixel_values"])
    assert torch.equal(before[1]["pixel_values"], after[1]["pixel_values"])


@pytest.mark.parametrize("corrupt", [
    pytest.param(lambda data: b"", id="empty"),
    pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
    pytest.param(lambda data: b"not a torch file " * 20, id="garbage"),
    pytest.param(lambda data: data[:64] + bytes(len(data) - 64), id="zeroed-tail"),
    pytest.param(lambda data: data[:200] + b"x" * 60 + data[260:], id="damaged-zip"),
])
def test_a_corrupt_entry_is_rebuilt(records, llava, cache, corrupt):
    first, _ = load_or_encode(records, llava, MAX_LENGTH, cache_dir=cache)
    [entry] = cache.iterdir()
    entry.write_bytes(corrupt(entry.read_bytes()))
    rebuilt, hit = load_or_encode(records, llava, MAX_LENGTH, cache_dir=cache)
    assert hit is False
    assert_same_samples(first, rebuilt)
    assert files(cache) == [entry.name]
    again, hit = load_or_encode(records, llava, MAX_LENGTH, cache_dir=cache)
    assert hit is True
    assert_same_samples(first, again)


def test_no_temporary_files_after_runs(records, llava, cache):
    load_or_encode(records, llava, MAX_LENGTH, cache_dir=cache)
    load_or_encode(records[:1], llava, MAX_LENGTH, cache_dir=cache)
    load_or_encode(records, llava, MAX_LENGTH, cache_dir=cache)
    names = files(cache)
    assert len(names) == 2
    assert all(name.endswith(".pt") and not name.startswith(".") for name in names)


def modules_run_by(call) -> set[str]:
    """The domainvlm modules whose functions run during `call()`, seen by a profiler."""
    seen: set[str] = set()

    def profile(frame, event, arg):
        if event == "call":
            seen.add(frame.f_globals.get("__name__", ""))

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return {name for name in seen if name.split(".")[0] == "domainvlm"}


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_every_module_that_runs_while_encoding_is_in_the_key(records, tiny_models, tmp_path,
                                                             family):
    fmt = prompt_format(tiny_models(family))
    several = records if fmt.family.multi_image else records[:2]
    ran = modules_run_by(lambda: encode_records(several, fmt, MAX_LENGTH))
    ran |= modules_run_by(lambda: load_or_encode(several, fmt, MAX_LENGTH,
                                                 cache_dir=tmp_path / "c"))
    assert "domainvlm.data.encode" in ran  # the profiler sees our code
    stores = {"domainvlm.atomic"}  # writes the finished entry to disk; does not shape it
    assert ran - stores <= set(ENCODING_MODULES)


@pytest.mark.parametrize("distribution", ["transformers", "tokenizers", "pillow"])
def test_an_upgrade_of_the_encoding_libraries_changes_the_key(records, llava, monkeypatch,
                                                              distribution):
    key = data_fingerprint(records, llava, MAX_LENGTH)
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "999.0" if name == distribution else real(name))
    code_fingerprint.cache_clear()
    try:
        assert data_fingerprint(records, llava, MAX_LENGTH) != key
    finally:
        monkeypatch.undo()
        code_fingerprint.cache_clear()
    assert data_fingerprint(records, llava, MAX_LENGTH) == key
