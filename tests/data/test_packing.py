"""Questions packed by image: the same loss as the rows alone, the image's tokens once."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from domainvlm.data.collate import collate
from domainvlm.data.encode import IGNORE_INDEX, encode_records, image_token_id, pad_token_id
from domainvlm.data.images import image_digest
from domainvlm.data.packing import (
    PREFIX,
    SEGMENT_KEY,
    pack_by_image,
    segment_attention_mask,
    with_segment_mask,
)
from domainvlm.data.prompting import PromptFormat
from domainvlm.data.records import load_records
from domainvlm.errors import ConfigError
from domainvlm.loading import load_model
from domainvlm.train.loop import token_loss_sum


def tokens_and_labels(ids, labels) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(ids.tolist()), tuple(labels.tolist())


def rows_of(pack):
    """The rows a pack holds, rebuilt from its segment ids: prefix plus each row's segment."""
    segments = pack[SEGMENT_KEY]
    for k in segments.unique().tolist():
        if k > PREFIX:
            keep = (segments == PREFIX) | (segments == k)
            yield tokens_and_labels(pack["input_ids"][keep], pack["labels"][keep])


def encoded(folder, data):
    loaded = load_model(str(folder), dtype="float32", device="cpu")
    fmt = PromptFormat.from_processor(loaded.processor, loaded.family)
    records = load_records(data)
    keys = [tuple(image_digest(ref) for ref in r.images) for r in records]
    return loaded, encode_records(records, fmt, 2048), keys


@pytest.mark.parametrize("family", ["llava", "fast-vlm"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_image_gives_each_row_its_own_loss_and_gradient(tiny_models, shapes_data,
                                                                  family, attention):
    loaded, samples, keys = encoded(tiny_models(family), shapes_data["train"])
    model, processor = loaded.model, loaded.processor
    model.set_attn_implementation(attention)
    repeats = [3 if i == 1 else 1 for i in range(len(samples))]
    packs, rows = pack_by_image(samples, repeats, keys, 2048, image_token_id(processor))
    assert len(packs) == len(set(keys)) < len(samples)
    assert sum(rows) == sum(repeats)
    pad = pad_token_id(processor)
    model.requires_grad_(True)

    def loss_and_grad(batch):
        model.zero_grad()
        loss = token_loss_sum(model, with_segment_mask(batch, attention))
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()
                                       if p.grad is not None])

    single = [loss_and_grad(collate([s], pad)) for s in samples]
    alone_loss = sum(loss * times for (loss, _), times in zip(single, repeats, strict=True))
    alone_grad = sum(grad * times for (_, grad), times in zip(single, repeats, strict=True))
    packed_loss, packed_grad = loss_and_grad(collate(packs, pad))
    assert packed_loss == pytest.approx(alone_loss, rel=1e-5)
    # float32 sums in another order: compare the whole gradient, relative to its size
    assert float((packed_grad - alone_grad).norm() / alone_grad.norm()) < 1e-5
    # Every row, as often as it repeats, is its pack's prefix plus its own segment, token for
    # token (labels too).
    expected = Counter(tokens_and_labels(s["input_ids"], s["labels"])
                       for s, times in zip(samples, repeats, strict=True) for _ in range(times))
    assert Counter(row for pack in packs for row in rows_of(pack)) == expected


def test_the_mask_keeps_rows_apart_and_padding_alive():
    segments = torch.tensor([[1, 1, 2, 2, 3, 3, 0]])
    mask = segment_attention_mask(segments)[0, 0]
    assert mask[3].tolist() == [True, True, True, True, False, False, False]
    assert mask[5].tolist() == [True, True, False, False, True, True, False]
    assert mask[6].tolist() == [False] * 6 + [True]  # padding: itself only
    additive = segment_attention_mask(segments, torch.float32)[0, 0]
    assert torch.equal(additive == 0, mask)


def sample(ids, answer_from):
    ids = torch.tensor(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[answer_from:] = ids[answer_from:]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "pixel_values": torch.zeros(1, 3, 2, 2)}


def test_rows_split_over_packs_at_max_length_and_rows_without_image_stay_alone():
    image = 9
    rows = [sample([5, image, image, 6, 7, 8], 4), sample([5, image, image, 4, 7, 3], 4),
            sample([5, image, image, 1, 7, 2], 4), sample([5, 6, 7], 1)]
    packs, counts = pack_by_image(rows, [1, 1, 1, 1], ["a", "a", "a", None], 9, image)
    assert counts == [2, 1, 1]
    assert packs[0]["input_ids"].tolist() == [5, image, image, 6, 7, 8, 4, 7, 3]
    assert packs[0]["position_ids"].tolist() == [0, 1, 2, 3, 4, 5, 3, 4, 5]
    assert packs[0][SEGMENT_KEY].tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert packs[0]["labels"].tolist()[3:] == [IGNORE_INDEX, 7, 8, IGNORE_INDEX, 7, 3]
    assert packs[1]["input_ids"].tolist() == [5, image, image, 1, 7, 2]
    assert packs[2]["input_ids"].tolist() == [5, 6, 7]


def test_rows_that_differ_before_their_image_cannot_share_it():
    image = 9
    rows = [sample([5, 1, image, 7, 8], 4), sample([5, 2, image, 7, 3], 4)]
    with pytest.raises(ConfigError, match="before its image tokens"):
        pack_by_image(rows, [1, 1], ["a", "a"], 100, image)


def test_finetune_with_packed_questions_learns_and_counts_rows(tiny_models, shapes_data,
                                                               tmp_path):
    from domainvlm.train.config import build_config
    from domainvlm.train.loop import finetune

    rows = [json.loads(x) for x in shapes_data["train"].read_text().splitlines()]
    images = len({r["image"] for r in rows})
    values = dict(model=str(tiny_models("llava")), data=str(shapes_data["train"]),
                  output=str(tmp_path / "run"), epochs=1, batch_size=2, lora_dropout=0.0,
                  learning_rate=5e-3, warmup_ratio=0.0, pack_questions=True,
                  cache_dir=str(tmp_path / "cache"))
    result = finetune(build_config(values))
    assert result.steps == -(-images // 2)  # a step takes 2 images with all their questions
    summary = json.loads((result.output / "run.json").read_text())["summary"]
    assert summary["samples"] == len(rows)  # rows, not packed sequences


def test_families_that_cannot_pack_are_refused(tiny_models, shapes_data, tmp_path):
    from domainvlm.train.config import build_config
    from domainvlm.train.loop import finetune

    values = dict(model=str(tiny_models("qwen2-vl")), data=str(shapes_data["train"]),
                  output=str(tmp_path / "run"), max_steps=1, pack_questions=True)
    with pytest.raises(ConfigError, match="not supported for the qwen2-vl family.*llava"):
        finetune(build_config(values))
