"""The tiny random detectors and CLIP: they load with plain transformers, their tokenizers keep
the layout the model code hard-codes (FACTS.md), the seed fixes the weights, writes are atomic.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, GroundingDinoForObjectDetection
from transformers.models.grounding_dino.modeling_grounding_dino import SPECIAL_TOKENS

from domainvlm.detection.tiny import KINDS, build_tiny_detector
from domainvlm.errors import OutputExistsError


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tiny")
    return {kind: build_tiny_detector(kind, root / kind) for kind in KINDS}


def test_clip_loads_with_the_auto_classes_and_embeds_text_and_images(built):
    model = AutoModel.from_pretrained(built["clip"])
    processor = AutoProcessor.from_pretrained(built["clip"])
    assert type(model).__name__ == "CLIPModel"
    inputs = processor(text=["red mug", "a blue box on a table"],
                       images=[Image.new("RGB", (50, 40), "red")], return_tensors="pt",
                       padding=True)
    with torch.inference_mode():
        text = model.get_text_features(input_ids=inputs["input_ids"],
                                       attention_mask=inputs["attention_mask"]).pooler_output
        image = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    assert text.shape == (2, model.config.projection_dim) and image.shape[0] == 1
    assert not torch.allclose(text[0], text[1])


@pytest.mark.parametrize("kind", ["clip", "owlv2", "owlvit"])
def test_clip_style_tokenizers_end_on_the_highest_id(kind, built):
    """OWL pools the text at `input_ids.argmax(-1)` and treats a query starting with id 0 as
    padding; the processor pads to `model_max_length`, which must fit the position table."""
    processor = AutoProcessor.from_pretrained(built[kind])
    tokenizer = processor.tokenizer
    config = AutoModel.from_pretrained(built[kind]).config.text_config
    assert tokenizer.eos_token_id == max(tokenizer.get_vocab().values())
    assert tokenizer.pad_token_id == 0 and tokenizer.bos_token_id > 0
    assert tokenizer.model_max_length == config.max_position_embeddings
    ids = tokenizer("wooden bottle")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert config.eos_token_id == tokenizer.eos_token_id


def test_grounding_dino_tokenizer_keeps_the_ids_the_model_hard_codes(built):
    processor = AutoProcessor.from_pretrained(built["grounding-dino"])
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?"]) == SPECIAL_TOKENS
    assert tokenizer.pad_token_id == 0
    # A training step's loss maps phrases to classes through those ids; it fails on others.
    model = GroundingDinoForObjectDetection.from_pretrained(built["grounding-dino"]).train()
    inputs = processor(images=[Image.new("RGB", (80, 60), "red")],
                       text=[["red mug", "blue box"]], return_tensors="pt")
    labels = [{"class_labels": torch.tensor([0, 1]),
               "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])}]
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_the_seed_fixes_the_weights_and_the_card_says_random(built, tmp_path):
    again = build_tiny_detector("owlv2", tmp_path / "again", seed=0)
    other = build_tiny_detector("owlv2", tmp_path / "other", seed=1)
    weights = (built["owlv2"] / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == weights
    assert (other / "model.safetensors").read_bytes() != weights
    card = (built["grounding-dino"] / "README.md").read_text()
    assert "randomly initialised" in card and "GroundingDinoForObjectDetection" in card


def test_bad_kind_and_used_folder_write_nothing(tmp_path):
    with pytest.raises(ValueError, match="valid kinds: owlv2, owlvit, grounding-dino, clip"):
        build_tiny_detector("yolo", tmp_path / "yolo")
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError):
        build_tiny_detector("clip", used)
    assert [p.name for p in tmp_path.iterdir()] == ["used"]
    assert [p.name for p in used.iterdir()] == ["notes.txt"]
