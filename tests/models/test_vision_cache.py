"""Cached image features stand in exactly for the vision tower, with and without LoRA; a
frozen tower's memoized outputs stand in exactly for the tower."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from domainvlm.data.collate import collate
from domainvlm.data.encode import encode_record, image_token_id
from domainvlm.data.prompting import PromptFormat
from domainvlm.data.records import Record
from domainvlm.families import FAMILIES, family_for
from domainvlm.models.parts import part_of
from domainvlm.models.vision_cache import (
    FEATURE_KEY,
    VISION_ONLY_KEYS,
    TowerMemo,
    attach_image_features,
    encoder_outputs,
    feature_bytes,
)
from domainvlm.nano.shapes_world import Shape, draw_scene
from domainvlm.train.lora import apply_lora, train_mode, untrained_modules

CACHED_FAMILIES = [f.name for f in FAMILIES if f.image_features_as]
MULTI_IMAGE = [f.name for f in FAMILIES if f.image_features_as and f.multi_image]
MEMO_FAMILIES = [f.name for f in FAMILIES if f.tower_rows_per_image]


def scene(colour="red", side="left"):
    return draw_scene([Shape(colour, "square", side)], 64, random.Random(0))


def setup(folder, two_images: bool = False):
    """Model, format, family and two samples whose prompts differ in length."""
    family = family_for(AutoConfig.from_pretrained(folder).model_type)
    fmt = PromptFormat.from_processor(AutoProcessor.from_pretrained(folder), family)
    long_images = [scene("blue", "right"), scene("green")] if two_images else [scene("blue")]
    records = [
        Record([scene()], "Colour?", "red", "v:1"),
        Record(long_images, "What colour is the shape on the right side of the image, and "
               "how many shapes are there?", "blue, one", "v:2"),
    ]
    samples = [encode_record(r, fmt, max_length=1024) for r in records]
    assert len(samples[0]["input_ids"]) != len(samples[1]["input_ids"])
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    return model, fmt, family, samples


def cached_copy(model, samples, fmt, **kwargs) -> list[dict]:
    copies = [dict(s) for s in samples]
    attach_image_features(model, copies, image_token_id(fmt.processor),
                          fmt.processor.tokenizer.pad_token_id, **kwargs)
    return copies


def check_cached_forward_matches(model, fmt, family, samples):
    pad = fmt.processor.tokenizer.pad_token_id
    img = image_token_id(fmt.processor)
    with torch.no_grad():
        reference = model(**collate(samples, pad))
    cached = cached_copy(model, samples, fmt)
    for sample, original in zip(cached, samples, strict=True):
        assert not set(VISION_ONLY_KEYS) & set(sample)
        n_image = int((original["input_ids"] == img).sum())
        width = model.get_input_embeddings().embedding_dim
        assert sample[FEATURE_KEY].shape == (n_image, width)
        assert torch.equal(sample["input_ids"], original["input_ids"])
    assert "pixel_values" in samples[0]  # the caller's samples were copied, not edited

    batch = collate(cached, pad)
    assert "pixel_values" not in batch and FEATURE_KEY in batch
    batch = encoder_outputs(batch, family)
    assert FEATURE_KEY not in batch and not set(VISION_ONLY_KEYS) & set(batch)
    with torch.no_grad():
        out = model(**batch)
    torch.testing.assert_close(out.logits, reference.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, reference.loss, atol=1e-5, rtol=0)

    # The features are really used: other features, other logits.
    altered = collate(cached, pad)
    altered[FEATURE_KEY] = torch.ones_like(altered[FEATURE_KEY])
    altered = encoder_outputs(altered, family)
    with torch.no_grad():
        assert not torch.allclose(model(**altered).logits, reference.logits, atol=1e-3)
    return cached


@pytest.mark.parametrize("family", CACHED_FAMILIES)
def test_cached_features_give_the_same_logits(tiny_models, family):
    model, fmt, fam, samples = setup(tiny_models(family))
    cached = check_cached_forward_matches(model, fmt, fam, samples)
    # Chunking does not change the features, and feature_bytes counts what is stored.
    one_by_one = cached_copy(model, samples, fmt, batch_size=1)
    for a, b in zip(cached, one_by_one, strict=True):
        torch.testing.assert_close(a[FEATURE_KEY], b[FEATURE_KEY], atol=1e-6, rtol=0)
    stored = sum(s[FEATURE_KEY].numel() * s[FEATURE_KEY].element_size() for s in cached)
    assert feature_bytes(samples, image_token_id(fmt.processor), model) == stored


@pytest.mark.parametrize("family", MULTI_IMAGE)
def test_cached_features_with_unequal_image_counts(tiny_models, family):
    model, fmt, fam, samples = setup(tiny_models(family), two_images=True)
    check_cached_forward_matches(model, fmt, fam, samples)


@pytest.mark.parametrize("family", CACHED_FAMILIES)
def test_loss_and_backward_through_lora_with_cached_features(tiny_models, family):
    model, fmt, fam, samples = setup(tiny_models(family))
    pad = fmt.processor.tokenizer.pad_token_id
    cached = cached_copy(model, samples, fmt)  # before LoRA, as the training loop does
    peft_model = apply_lora(model, method="lora", r=4, alpha=8, dropout=0.0,
                            components=["language"])
    train_mode(peft_model, untrained_modules(peft_model))  # as the training loop does
    with torch.no_grad():
        pixel_loss = peft_model(**collate(samples, pad)).loss
    out = peft_model(**encoder_outputs(collate(cached, pad), fam))
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, pixel_loss, atol=1e-5, rtol=0)
    out.loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert grads and all("lora_" in n for n in grads)
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # lora_B starts at zero, so its gradients are the ones that must be non-zero.
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


@pytest.mark.parametrize("family", MEMO_FAMILIES)
@pytest.mark.parametrize("budget", [2**30, 0])
def test_tower_memo_gives_the_same_outputs_and_runs_each_image_once(tiny_models, family,
                                                                    budget):
    model, fmt, _, samples = setup(tiny_models(family))
    batch = collate([*samples, samples[0]], fmt.processor.tokenizer.pad_token_id)
    pixels = batch["pixel_values"]  # the first image twice in one batch
    other = -pixels[1:2]  # other pixels: another image
    tower = part_of(model, "vision")
    with torch.no_grad():
        reference = model(**batch).logits
        live_rows, live_other = tower(pixels)[0], tower(other)[0]
    with TowerMemo(tower, max_bytes=budget) as memo, torch.no_grad():
        first = model(**batch).logits
        second = model(**batch).logits
        assert "forward" in vars(tower)  # the memo stands in for the tower's forward...
    assert "forward" not in vars(tower)  # ...and afterwards the tower's own is back
    torch.testing.assert_close(first, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(second, reference, atol=1e-5, rtol=0)
    # Two distinct images, once each; the repeat and the second call come from memory,
    # unless nothing may be kept.
    assert (memo.computed, memo.served) == ((2, 1 + 3) if budget else (2 + 2, 1 + 1))

    with TowerMemo(tower, max_bytes=budget) as memo, torch.no_grad():
        rows, memo_other = tower(pixels)[0], tower(other)[0]
    assert (memo.computed, memo.served) == (2 + 1, 1)
    # Tower outputs are compared relative to their size (a tiny FastVLM's are ~1e-9).
    scale = float(live_rows.abs().max())
    torch.testing.assert_close(rows / scale, live_rows / scale, atol=1e-5, rtol=0)
    # An unseen image runs the tower: memory does not answer for the image it resembles.
    torch.testing.assert_close(memo_other / scale, live_other / scale, atol=1e-5, rtol=0)
    assert float((live_other - live_rows[1:2]).abs().max()) > 0.1 * scale
