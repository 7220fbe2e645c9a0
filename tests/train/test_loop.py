"""The training recipe on a tiny real LLaVA: it learns, repeats, accumulates, logs, guards."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from domainvlm.errors import ConfigError, OutputExistsError
from domainvlm.train.config import build_config
from domainvlm.train.loop import finetune


def run(tiny_models, shapes_data, tmp_path, name="run", family="llava", **overrides):
    values = dict(model=str(tiny_models(family)), data=str(shapes_data["train"]),
                  output=str(tmp_path / name), max_steps=6, batch_size=8, lora_dropout=0.0,
                  learning_rate=5e-3, warmup_ratio=0.0, cache_dir=str(tmp_path / "cache"))
    values.update(overrides)
    return finetune(build_config(values))


def adapter_weights(result) -> dict[str, torch.Tensor]:
    return load_file(str(result.adapter / "adapter_model.safetensors"))


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def losses(result) -> list[float]:
    return [r["loss"] for r in json.loads((result.output / "history.json").read_text())]


def test_loss_falls_on_answer_tokens(tiny_models, shapes_data, tmp_path):
    # Closed (yes/no, left/right, small/large) questions: a random tiny model's near-uniform
    # head has a visible drop to make on them within a few steps.
    closed = tmp_path / "closed.jsonl"
    folder = shapes_data["train"].parent
    rows = [json.loads(x) for x in shapes_data["train"].read_text().splitlines()]
    closed.write_text("".join(json.dumps({**r, "image": str(folder / r["image"])}) + "\n"
                              for r in rows if r["question_type"] == "closed"))
    result = run(tiny_models, shapes_data, tmp_path, max_steps=25, learning_rate=1e-2,
                 data=str(closed))
    trajectory = losses(result)
    assert len(trajectory) == 25
    # Random tiny models have near-uniform output heads, so the drop is modest but real.
    assert sum(trajectory[-5:]) / 5 < 0.95 * sum(trajectory[:5]) / 5


def test_same_seed_same_adapter_other_seed_differs(tiny_models, shapes_data, tmp_path):
    a = adapter_weights(run(tiny_models, shapes_data, tmp_path, "a", lora_dropout=0.1))
    b = adapter_weights(run(tiny_models, shapes_data, tmp_path, "b", lora_dropout=0.1))
    c = adapter_weights(run(tiny_models, shapes_data, tmp_path, "c", lora_dropout=0.1, seed=1))
    assert max_difference(a, b) == 0.0
    assert max_difference(a, c) > 1e-4


@pytest.mark.parametrize("overrides", [
    {"micro_batch_size": 2},  # 4 accumulated micro-batches per step
    {"gradient_checkpointing": True},
    {"vision_cache": "off"},
    {"group_by_length": True, "micro_batch_size": 4},
])
def test_equivalent_settings_take_the_same_steps(tiny_models, shapes_data, tmp_path, overrides):
    reference = run(tiny_models, shapes_data, tmp_path, "reference")
    other = run(tiny_models, shapes_data, tmp_path, "other", **overrides)
    assert max_difference(adapter_weights(reference), adapter_weights(other)) < 1e-5
    assert losses(reference) == pytest.approx(losses(other), rel=1e-5)


def test_a_repeated_row_trains_like_that_many_copies_of_it(tiny_models, shapes_data, tmp_path):
    lines = shapes_data["train"].read_text().splitlines()
    row = json.loads(lines[3])
    folder = shapes_data["train"].parent  # image paths are relative to the data file
    marked, copied = folder / "marked.jsonl", folder / "copied.jsonl"
    marked.write_text("".join(x + "\n" for x in
                              lines[:3] + [json.dumps({**row, "repeat": 9})] + lines[4:]))
    copied.write_text("".join(x + "\n" for x in lines[:4] + [lines[3]] * 8 + lines[4:]))
    steps = -(-(len(lines) + 8) // 8)  # one epoch of the copies
    repeat = run(tiny_models, shapes_data, tmp_path, "repeat", data=str(marked), epochs=1,
                 max_steps=None)
    copies = run(tiny_models, shapes_data, tmp_path, "copies", data=str(copied),
                 max_steps=steps)
    assert repeat.steps == steps > -(-len(lines) // 8)
    assert max_difference(adapter_weights(repeat), adapter_weights(copies)) < 1e-5
    assert losses(repeat) == pytest.approx(losses(copies), rel=1e-5)


def test_frozen_tower_outputs_are_memoized_when_the_projector_trains(tiny_models, shapes_data,
                                                                     tmp_path):
    rows = [json.loads(x) for x in shapes_data["train"].read_text().splitlines()]
    steps = -(-len(rows) // 8)  # one epoch: every training image is seen
    targets = {"lora_targets": ["language", "projector"], "max_steps": steps}
    memo = run(tiny_models, shapes_data, tmp_path, "memo", **targets)
    live = run(tiny_models, shapes_data, tmp_path, "live", vision_cache="off", **targets)
    assert max_difference(adapter_weights(memo), adapter_weights(live)) < 1e-5
    assert losses(memo) == pytest.approx(losses(live), rel=1e-5)
    assert any("multi_modal_projector" in k for k in adapter_weights(memo))
    summary = json.loads((memo.output / "run.json").read_text())["summary"]
    images = len({r["image"] for r in rows})
    assert summary["vision_tower_rows"] == {"computed": images, "served": len(rows) - images}
    assert "vision_tower_rows" not in json.loads((live.output / "run.json").read_text())[
        "summary"]


def test_warmup_then_cosine_schedule(tiny_models, shapes_data, tmp_path):
    result = run(tiny_models, shapes_data, tmp_path, max_steps=10, warmup_ratio=0.3,
                 learning_rate=1e-3)
    lrs = [r["lr"] for r in json.loads((result.output / "history.json").read_text())]
    peak = lrs.index(max(lrs))
    assert peak == 2 and max(lrs) == pytest.approx(1e-3)
    assert lrs[:peak + 1] == sorted(lrs[:peak + 1])
    assert lrs[peak:] == sorted(lrs[peak:], reverse=True) and lrs[-1] < 1e-4


def test_periodic_eval_keeps_best_adapter_and_tensorboard_logs(tiny_models, shapes_data,
                                                               tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run(tiny_models, shapes_data, tmp_path, max_steps=6, eval_every=2,
                 eval_data=str(shapes_data["eval"]), save_every=2, keep_checkpoints=2)
    history = json.loads((result.output / "history.json").read_text())
    evals = [r for r in history if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4, 6]
    best = min(evals, key=lambda r: r["eval_loss"])
    summary = json.loads((result.output / "run.json").read_text())["summary"]
    assert summary["best_step"] == best["step"]
    assert (result.output / "best" / "adapter_model.safetensors").is_file()
    checkpoints = sorted(p.name for p in (result.output / "checkpoints").iterdir())
    assert checkpoints == ["step-0000002", "step-0000004"]
    events = EventAccumulator(str(result.output / "logs"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "eval/loss"} <= set(tags)
    assert len(events.Scalars("train/loss")) == 6


def test_dora_trains_magnitude_vectors(tiny_models, shapes_data, tmp_path):
    weights = adapter_weights(run(tiny_models, shapes_data, tmp_path, method="dora"))
    assert any("lora_magnitude_vector" in k for k in weights)


def test_qlora_without_cuda_is_a_clear_error(tiny_models, shapes_data, tmp_path):
    with pytest.raises(ConfigError, match="QLoRA.*CUDA"):
        run(tiny_models, shapes_data, tmp_path, method="qlora")
    assert not (tmp_path / "run").exists()


def test_output_folder_is_never_silently_reused(tiny_models, shapes_data, tmp_path):
    run(tiny_models, shapes_data, tmp_path, max_steps=2)
    with pytest.raises(OutputExistsError, match="differs in: learning_rate"):
        run(tiny_models, shapes_data, tmp_path, max_steps=2, learning_rate=1e-4)
    with pytest.raises(OutputExistsError, match="already holds this finished run"):
        run(tiny_models, shapes_data, tmp_path, max_steps=2)
    again = run(tiny_models, shapes_data, tmp_path, max_steps=2, learning_rate=1e-4,
                overwrite=True)
    assert json.loads((again.output / "run.json").read_text())["config"]["learning_rate"] == 1e-4


@pytest.mark.parametrize("family", ["qwen2-vl", "idefics3", "paligemma", "llava-next"])
def test_other_families_train(tiny_models, shapes_data, tmp_path, family):
    result = run(tiny_models, shapes_data, tmp_path, family=family, max_steps=3)
    assert all(torch.isfinite(torch.tensor(losses(result))))
    assert (result.adapter / "adapter_config.json").is_file()


def test_batch_size_must_split_over_micro_batches(tiny_models, shapes_data, tmp_path):
    with pytest.raises(ConfigError, match="--batch-size.*multiple"):
        run(tiny_models, shapes_data, tmp_path, batch_size=8, micro_batch_size=3)


def test_a_last_batch_smaller_than_the_split_still_trains_every_sample():
    from domainvlm.train.batching import micro_batches, split_batch

    assert split_batch([7, 8, 9], 4) == [[7], [8], [9], []]
    assert micro_batches([7, 8, 9], 1, 0, 4) == [[7], [8], [9], []]
    assert micro_batches([7, 8, 9], 2, 1, 2) == [[8], []]  # rank 1 of 2: one sample, one empty


def test_full_training_keeps_frozen_parts_as_they_were(tiny_models, shapes_data, tmp_path):
    # FastVLM's tower has batch norm: frozen, neither its weights nor its running statistics
    # may move, while the projector and language model train.
    from transformers import AutoModelForImageTextToText

    before = AutoModelForImageTextToText.from_pretrained(tiny_models("fast-vlm")).state_dict()
    result = run(tiny_models, shapes_data, tmp_path, family="fast-vlm", method="full",
                 frozen=["vision"], max_steps=3)
    after = AutoModelForImageTextToText.from_pretrained(result.adapter).state_dict()
    vision = [k for k in before if "vision_tower" in k]
    assert any("running_mean" in k for k in vision)
    assert all(torch.equal(before[k], after[k]) for k in vision)
    for part in ("multi_modal_projector", "language_model"):
        assert any(not torch.equal(before[k], after[k]) for k in before if part in k), part


def test_a_part_trained_fully_beside_lora_is_saved_in_the_adapter(tiny_models, shapes_data,
                                                                  tmp_path):
    """LLaVA-1.5's LoRA recipe: LoRA on the language model, the projector trained in full. The
    adapter carries the whole new projector, and loading it gives that projector back."""
    from transformers import AutoModelForImageTextToText

    from domainvlm.adapter_io import load_with_adapter

    base = AutoModelForImageTextToText.from_pretrained(tiny_models("llava")).state_dict()
    result = run(tiny_models, shapes_data, tmp_path, train_fully=["projector"], max_steps=3)
    weights = adapter_weights(result)
    projector = [k for k in weights if "multi_modal_projector" in k]
    assert projector and not any("lora_" in k for k in projector)
    assert any("lora_A" in k and "language_model" in k for k in weights)
    merged = load_with_adapter(str(result.adapter)).model.merge_and_unload().state_dict()
    moved = [k for k in base if "multi_modal_projector" in k
             and not torch.equal(merged[k], base[k])]
    assert len(moved) == len([k for k in base if "multi_modal_projector" in k]) > 0
    summary = json.loads((result.output / "run.json").read_text())["summary"]
    assert "vision_tower_rows" in summary  # the tower is still frozen: its rows are memoized


@pytest.mark.parametrize(("values", "message"), [
    ({"train_fully": ["projector"], "lora_targets": ["language", "projector"]},
     "either LoRA or full training"),
    ({"train_fully": ["projector"], "method": "full"}, "`train_fully` is for LoRA methods"),
])
def test_train_fully_is_refused_where_it_means_nothing(values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(dict(model="m", data="d.jsonl", output="o", **values))


def test_frozen_parts_need_full_training(tiny_models, shapes_data, tmp_path):
    with pytest.raises(ConfigError, match="`frozen` applies to method full"):
        run(tiny_models, shapes_data, tmp_path, frozen=["vision"])


def test_frozen_has_one_spelling_and_leaves_something_to_train():
    base = dict(model="m", data="d.jsonl", output="o", method="full")
    a = build_config({**base, "frozen": ["vision", "projector", "vision"]})
    b = build_config({**base, "frozen": ["projector", "vision"]})
    assert a.frozen == b.frozen == ["projector", "vision"]
    assert a.fingerprint_fields() == b.fingerprint_fields()
    with pytest.raises(ConfigError, match="nothing would train"):
        build_config({**base, "frozen": ["language", "vision", "projector"]})


def with_whole_prompts_shared(rows: list[dict]) -> list[dict]:
    """The rows with one image left a single question, repeated, and another image's first
    question asked again with another answer: rows that share their whole prompt."""
    by_image: dict[str, list[dict]] = {}
    for row in rows:
        by_image.setdefault(row["image"], []).append(row)
    first, second, *rest = by_image.values()
    duplicate = {**second[0], "answer": first[0]["answer"]}
    return [{**first[0], "repeat": 3}, *second, duplicate, *(r for rows in rest for r in rows)]


@pytest.mark.parametrize("shared", [False, True], ids=["as-generated", "whole-prompt-shared"])
def test_packed_questions_take_the_same_steps_as_their_rows(tiny_models, shapes_data, tmp_path,
                                                            shared):
    rows = [json.loads(x) for x in shapes_data["train"].read_text().splitlines()]
    folder = shapes_data["train"].parent
    rows = [{**r, "image": str(folder / r["image"])} for r in rows]
    if shared:
        rows = with_whole_prompts_shared(rows)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    images = len({r["image"] for r in rows})
    # Each step over the whole set, either way: the same rows, so the same updates.
    alone = run(tiny_models, shapes_data, tmp_path, "alone", data=str(data), max_steps=3,
                batch_size=sum(r.get("repeat", 1) for r in rows))
    packed = run(tiny_models, shapes_data, tmp_path, "packed", data=str(data), max_steps=3,
                 batch_size=images, pack_questions=True)
    assert max_difference(adapter_weights(alone), adapter_weights(packed)) < 1e-5
    assert losses(alone) == pytest.approx(losses(packed), rel=1e-5)
