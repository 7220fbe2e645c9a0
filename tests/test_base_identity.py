"""An adapter knows its base: merge and eval refuse another architecture or other weights
with one clear line, the override folds it anyway, and the same weights anywhere pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from domainvlm.base_identity import identify
from domainvlm.tiny import build_tiny_model
from domainvlm.train.config import build_config
from domainvlm.train.loop import finetune


@pytest.fixture
def cli(warm_domainvlm):
    """`domainvlm ARGS` as its own process (started warm)."""
    def run(*args) -> subprocess.CompletedProcess:
        return subprocess.run([warm_domainvlm, *map(str, args)], capture_output=True,
                              text=True, timeout=300)

    return run


def lines(stderr: str, prefix: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="module")
def adapter(tiny_models, shapes_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adapter")
    return finetune(build_config(dict(
        model=str(tiny_models("llava")), data=str(shapes_data["train"]), output=root / "run",
        max_steps=3, batch_size=4, learning_rate=5e-3, lora_dropout=0.0,
        cache_dir=root / "cache"))).adapter


@pytest.fixture(scope="module")
def bases(tiny_models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    copy = shutil.copytree(tiny_models("llava"), root / "copy")
    return {"same": tiny_models("llava"), "copy": copy,
            "other architecture": tiny_models("qwen2-vl"),
            "other weights": build_tiny_model("llava", root / "llava-seed-1", seed=1)}


@pytest.fixture(scope="module")
def questions(shapes_data, tmp_path_factory) -> Path:
    folder = shapes_data["eval"].parent
    rows = [json.loads(x) for x in shapes_data["eval"].read_text().splitlines()[:2]]
    path = tmp_path_factory.mktemp("questions") / "two.jsonl"
    path.write_text("".join(json.dumps({**r, "image": str(folder / r["image"])}) + "\n"
                            for r in rows))
    return path


def command(name, adapter, output, base, questions):
    if name == "merge":
        return ["merge", "--adapter", adapter, "--output", output, "--base", base]
    return ["eval", "--model", adapter, "--data", questions, "--output", output,
            "--base", base, "--max-new-tokens", "2"]


@pytest.mark.parametrize("name", ["merge", "eval"])
@pytest.mark.parametrize(("kind", "what"), [
    ("other architecture", "another architecture"),
    ("other weights", "the same architecture with other weights")])
def test_a_wrong_base_is_refused_in_one_line_naming_both_models_and_the_override(
        cli, adapter, bases, questions, tmp_path, name, kind, what):
    output = tmp_path / "out"
    result = cli(*command(name, adapter, output, bases[kind], questions))
    assert result.returncode == 2, result.stderr
    errors = lines(result.stderr, "error:")
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"adapter {adapter} was trained on {bases['same'].resolve()} (llava" in errors[0]
    assert f"the base given is {bases[kind].resolve()}" in errors[0]
    assert what in errors[0] and "--ignore-base-mismatch" in errors[0]
    assert not output.exists()


def test_the_override_folds_the_adapter_into_the_other_base(cli, adapter, bases, tmp_path):
    result = cli("merge", "--adapter", adapter, "--output", tmp_path / "merged", "--base",
                 bases["other weights"], "--ignore-base-mismatch")
    assert result.returncode == 0, result.stderr
    warnings = lines(result.stderr, "warning:")
    assert len(warnings) == 1 and "other weights" in warnings[0], result.stderr
    # Plain PEFT on that base is the oracle.
    expected = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(bases["other weights"]),
        str(adapter)).merge_and_unload().state_dict()
    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    got = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged").state_dict()
    assert merged and got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize(("name", "kind"), [
    ("merge", None), ("merge", "same"), ("merge", "copy"), ("eval", "copy")])
def test_the_base_it_was_trained_on_passes_wherever_it_lies(
        cli, adapter, bases, questions, tmp_path, name, kind):
    args = command(name, adapter, tmp_path / "out", bases[kind or "same"], questions)
    result = cli(*(args[:-2] if kind is None and name == "merge" else args))
    assert result.returncode == 0, result.stderr
    assert not lines(result.stderr, "warning:") and not lines(result.stderr, "error:")


def test_an_adapter_from_before_the_record_loads_with_one_warning(cli, adapter, tmp_path):
    old = shutil.copytree(adapter, tmp_path / "old-adapter")
    (old / "base_model.json").unlink()
    result = cli("merge", "--adapter", old, "--output", tmp_path / "merged")
    assert result.returncode == 0, result.stderr
    warnings = lines(result.stderr, "warning:")
    assert len(warnings) == 1 and "records no fingerprint of its base" in warnings[0], \
        result.stderr


def test_the_record_names_the_base_and_ignores_sharding_and_input_size(
        adapter, bases, tiny_models, tmp_path):
    from domainvlm.nano import with_input_size

    record = json.loads((adapter / "base_model.json").read_text())
    assert record["source"] == str(bases["same"].resolve())
    assert record["model_type"] == "llava"
    assert record["weights"] == identify(str(bases["copy"])).weights
    assert record["weights"] != identify(str(bases["other weights"])).weights

    # The same tensors in many shards are the same weights.
    model = AutoModelForImageTextToText.from_pretrained(bases["same"])
    model.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 2
    assert identify(str(tmp_path / "sharded")).weights == record["weights"]

    # The demo's base: the nano FastVLM taking larger images, same weights.
    fast = tiny_models("fast-vlm")
    larger = with_input_size(fast, 128, tmp_path / "larger")
    assert identify(str(larger)).weights == identify(str(fast)).weights
    assert identify(str(larger)).model_type == "fast_vlm"


def test_a_hub_id_is_fingerprinted_from_its_cached_files(bases, tmp_path):
    """A base named by hub id resolves to its snapshot in the local cache (laid out here as
    huggingface_hub lays it out), so it matches the same weights in a folder."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny-org--tiny-llava" / "snapshots" / "0123abc"
    shutil.copytree(bases["same"], snapshot)
    (cache / "models--tiny-org--tiny-llava" / "refs").mkdir()
    (cache / "models--tiny-org--tiny-llava" / "refs" / "main").write_text("0123abc")
    script = ("from domainvlm.base_identity import identify; "
              "i = identify('tiny-org/tiny-llava'); print(i.model_type, i.weights)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_CACHE": str(cache),
                                 "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["llava", identify(str(bases["same"])).weights]
