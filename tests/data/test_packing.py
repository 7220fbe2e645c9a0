"""Questions packed by image: the same loss as the rows alone, the image's tokens once."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domainvlm.data.collate import collate
from domainvlm.data.encode import (
    IGNORE_INDEX,
    encode_record,
    encode_records,
    image_token_id,
    pad_token_id,
)
from domainvlm.data.images import image_digest
from domainvlm.data.packing import (
    PREFIX,
    SEGMENT_KEY,
    pack_by_image,
    segment_attention_mask,
    with_segment_mask,
)
from domainvlm.data.prompting import PromptFormat
from domainvlm.data.records import Record, load_records
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


class RowPool:
    """Rows of a few images of the shapes set, encoded once: each image's own questions, each
    with its own answer or another image's (so one question can be asked twice with different
    answers)."""

    def __init__(self, folder, data, attention):
        self.loaded = load_model(str(folder), dtype="float32", device="cpu")
        self.loaded.model.set_attn_implementation(attention)
        self.loaded.model.requires_grad_(True)
        self.fmt = PromptFormat.from_processor(self.loaded.processor, self.loaded.family)
        by_image: dict[str, list[Record]] = {}
        for record in load_records(data):
            by_image.setdefault(str(record.images[0]), []).append(record)
        self.images = list(by_image.values())[:3]
        self.answers = sorted({r.answer for rows in self.images for r in rows})
        self._encoded: dict[tuple[int, int, int], dict] = {}
        self._alone: dict[tuple[int, ...], tuple[float, list]] = {}

    def sample(self, image: int, question: int, answer: int) -> dict:
        rows = self.images[image]
        key = (image, question % len(rows), answer)
        if key not in self._encoded:
            record = rows[key[1]]
            text = record.answer if answer == 0 else self.answers[answer % len(self.answers)]
            self._encoded[key] = encode_record(
                Record(images=record.images, question=record.question, answer=text,
                       source=record.source), self.fmt, 2048)
        return self._encoded[key]

    def params(self) -> list:
        return [p for p in self.loaded.model.parameters() if p.requires_grad]

    def row_losses(self, batch) -> list[tuple[tuple, torch.Tensor]]:
        """(row, summed answer loss) of every row of a collated batch, packed or not (a row is
        its image and tokens): a token of segment k is predicted from the position before it."""
        model = self.loaded.model
        inputs = with_segment_mask(dict(batch), attention_of_model(model))
        labels = inputs.pop("labels")
        logits = model(**inputs).logits.float()  # (B, L, V)
        token_loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:],
                                     ignore_index=IGNORE_INDEX, reduction="none")  # (B, L-1)
        segments = batch.get(SEGMENT_KEY, torch.full_like(labels, FIRST))  # alone: one row
        rows = []
        for b in range(len(labels)):
            for k in segments[b].unique().tolist():
                if k <= PREFIX:
                    continue
                keep = (segments[b] == PREFIX) | (segments[b] == k)
                row = (image_of(batch["pixel_values"][b]), *batch["input_ids"][b][keep].tolist())
                rows.append((row, token_loss[b][(segments[b] == k)[1:]].sum()))
        return rows

    def alone(self, sample: dict) -> tuple[float, list]:
        """A row's loss and gradient, trained in a sequence of its own."""
        key = row_of(sample)
        if key not in self._alone:
            [(_, loss)] = self.row_losses(collate([sample], pad_token_id(self.loaded.processor)))
            grads = torch.autograd.grad(loss, self.params(), allow_unused=True)
            self._alone[key] = (loss.item(), grads)
        return self._alone[key]


FIRST = PREFIX + 1


def image_of(pixels: torch.Tensor) -> str:
    return hashlib.sha256(pixels.numpy().tobytes()).hexdigest()


def row_of(sample: dict) -> tuple:
    """What makes a row itself: its image and its tokens (one question about two images has
    the same tokens twice)."""
    return (image_of(sample["pixel_values"][0]), *sample["input_ids"].tolist())


def attention_of_model(model) -> str:
    return model.config.get_text_config()._attn_implementation


def assert_every_packed_row_is_its_own(pool: RowPool, arrangement) -> None:
    """Pack an arrangement of (image, question, answer, repeat) rows, and check that each packed
    row has the loss and gradient it has alone."""
    samples = [pool.sample(i, q, a) for i, q, a, _ in arrangement]
    repeats = [times for *_, times in arrangement]
    keys = [i for i, *_ in arrangement]
    processor = pool.loaded.processor
    packs, counts = pack_by_image(samples, repeats, keys, 2048, image_token_id(processor))
    assert sum(counts) == sum(repeats)
    rows = pool.row_losses(collate(packs, pad_token_id(processor)))
    expected = Counter(row_of(s) for s, times in zip(samples, repeats, strict=True)
                       for _ in range(times))
    assert Counter(row for row, _ in rows) == expected
    by_row = {row_of(s): s for s in samples}
    for row, loss in rows:
        alone_loss, alone_grads = pool.alone(by_row[row])
        assert loss.item() == pytest.approx(alone_loss, rel=1e-5)
        grads = torch.autograd.grad(loss, pool.params(), retain_graph=True, allow_unused=True)
        packed = torch.cat([g.flatten() for g in grads if g is not None])
        single = torch.cat([g.flatten() for g in alone_grads if g is not None])
        assert float((packed - single).norm() / single.norm()) < 1e-4


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def row_pool(request, tiny_models, shapes_data) -> RowPool:
    return RowPool(tiny_models("llava"), shapes_data["train"], request.param)


# (image, question, answer, repeat): answer 0 is the record's own, others another answer.
ROWS = st.tuples(st.integers(0, 2), st.integers(0, 5), st.integers(0, 3), st.integers(1, 3))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrangement=st.lists(ROWS, min_size=1, max_size=5))
def test_every_arrangement_of_packed_rows_gives_each_its_own_loss_and_gradient(row_pool,
                                                                               arrangement):
    assert_every_packed_row_is_its_own(row_pool, arrangement)


@pytest.mark.parametrize("arrangement", [
    [(0, 0, 0, 3)],  # one record repeated, alone on its image: the whole prompt is shared
    [(0, 0, 0, 1), (0, 0, 1, 1)],  # one question asked twice, two different answers
    [(1, 0, 0, 2), (1, 1, 0, 1)],  # a repeat beside another question of its image
], ids=["repeat-alone", "duplicate-question", "mixed"])
def test_rows_sharing_their_whole_prompt_keep_their_own_loss(row_pool, arrangement):
    # Regression: the shared prefix ran through the last prompt token, so row k's first answer
    # token was predicted from row k-1's last token (14.397 alone, 14.469 packed).
    assert_every_packed_row_is_its_own(row_pool, arrangement)


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


def test_per_token_keys_of_more_dimensions_are_packed_per_token():
    # A cross-attention mask (L, images, tiles), as Mllama's processor returns, follows its
    # tokens: each packed row rebuilt from the pack is the row alone, in every key.
    image = 9
    rows = [sample([5, image, 2, 6, 7, 8], 4), sample([5, image, 2, 4, 7], 3)]
    for row in rows:  # one image of one tile (of two): tokens from the image on see it
        mask = torch.zeros(len(row["input_ids"]), 1, 2, dtype=torch.long)
        mask[1:, 0, 0] = 1
        row["cross_attention_mask"] = mask
    [pack], _ = pack_by_image(rows, [1, 1], ["a", "a"], 100, image)
    assert pack["cross_attention_mask"].shape == (len(pack["input_ids"]), 1, 2)
    segments = pack[SEGMENT_KEY]
    for k, row in enumerate(rows, start=PREFIX + 1):
        keep = (segments == PREFIX) | (segments == k)
        for key in ("input_ids", "labels", "cross_attention_mask"):
            assert torch.equal(pack[key][keep], row[key]), key


def test_collate_pads_per_token_keys_of_more_dimensions():
    short, long = sample([5, 9, 6, 7], 2), sample([5, 9, 9, 6, 7, 8], 3)
    short["cross_attention_mask"] = torch.ones(4, 1, 2, dtype=torch.long)
    long["cross_attention_mask"] = torch.ones(6, 2, 2, dtype=torch.long)  # two images
    batch = collate([short, long], pad_token_id=0)
    mask = batch["cross_attention_mask"]
    assert mask.shape == (2, 6, 2, 2)
    assert mask[0, :4, 0].eq(1).all() and mask[0, :4, 1].eq(0).all()  # no second image
    assert mask[0, 4:].eq(0).all()  # padding tokens see no image
    assert torch.equal(mask[1], long["cross_attention_mask"])
    assert batch["labels"][0, 4:].eq(IGNORE_INDEX).all()


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
