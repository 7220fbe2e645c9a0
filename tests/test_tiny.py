"""Tests for domainvlm.tiny: tiny random models of every family build, load, train and generate."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image

from domainvlm.tiny import FAMILIES, build_tiny_model

ARCHITECTURES = {
    "llava": "LlavaForConditionalGeneration",
    "llava-next": "LlavaNextForConditionalGeneration",
    "qwen2-vl": "Qwen2VLForConditionalGeneration",
    "qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "paligemma": "PaliGemmaForConditionalGeneration",
    "fast-vlm": "FastVlmForConditionalGeneration",
    "mllama": "MllamaForConditionalGeneration",
}
CHAT_FAMILIES = [f for f in FAMILIES if f != "paligemma"]
END_OF_TURN = {
    "llava": "</s>",
    "llava-next": "</s>",
    "qwen2-vl": "<|im_end|>",
    "qwen2.5-vl": "<|im_end|>",
    "idefics3": "<end_of_utterance>",
    "fast-vlm": "</s>",
    "mllama": "<|eot_id|>",
}
QUESTION = "Is there a lesion?"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build every family once (seed 0) and share the folders across tests."""
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_model(family, root / family) for family in FAMILIES}


def _load(path: Path):
    model = transformers.AutoModelForImageTextToText.from_pretrained(path)
    processor = transformers.AutoProcessor.from_pretrained(path)
    return model, processor


def _image(colour: tuple[int, int, int] = (200, 40, 40)) -> Image.Image:
    return Image.new("RGB", (64, 64), colour)


def _user(n_images: int, text: str = QUESTION) -> list[dict]:
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def _inputs(family: str, processor, n_images: int = 1):
    if family == "paligemma":
        prompt = QUESTION
    else:
        prompt = processor.apply_chat_template(
            _user(n_images), add_generation_prompt=True, tokenize=False
        )
    images = [_image((40 * i, 100, 200)) for i in range(n_images)]
    inputs = processor(images=[images], text=prompt, return_tensors="pt")  # one list per prompt
    inputs.pop("labels", None)  # PaliGemma returns labels; the test passes its own
    return inputs


@pytest.mark.parametrize("family", FAMILIES)
def test_build_load_train_generate(family: str, built: dict[str, Path]) -> None:
    path = built[family]
    assert (path / "README.md").read_text().startswith("---")
    model, processor = _load(path)
    assert type(model).__name__ == ARCHITECTURES[family]
    assert sum(p.numel() for p in model.parameters()) < 5_000_000

    inputs = _inputs(family, processor)
    assert inputs["input_ids"].shape[1] < 120  # image token counts stay small
    out = model(**inputs, labels=inputs["input_ids"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert any(p.grad is not None for p in model.parameters())

    model.eval()
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_two_images(family: str, built: dict[str, Path]) -> None:
    model, processor = _load(built[family])
    inputs = _inputs(family, processor, n_images=2)
    with torch.no_grad():
        out = model(**inputs, labels=inputs["input_ids"])
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_chat_template_turn_ends_with_end_of_turn(family: str, built: dict[str, Path]) -> None:
    processor = transformers.AutoProcessor.from_pretrained(built[family])
    prompt = processor.apply_chat_template(_user(1), add_generation_prompt=True, tokenize=False)
    answer = {"role": "assistant", "content": [{"type": "text", "text": "yes"}]}
    full = processor.apply_chat_template([*_user(1), answer], tokenize=False)
    assert full.startswith(prompt)
    assert full[full.rindex("yes") + 3 :].startswith(END_OF_TURN[family])
    eot = END_OF_TURN[family]
    tokenizer = processor.tokenizer
    # A special token, named (eos) or not (Llama 3's <|eot_id|>).
    assert tokenizer.added_tokens_decoder[tokenizer.convert_tokens_to_ids(eot)].special
    # Plain-string content renders too, through the tokenizer's own template.
    tokenizer = transformers.AutoTokenizer.from_pretrained(built[family])
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "hi" in text


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_round_trip(family: str, built: dict[str, Path]) -> None:
    tok = transformers.AutoProcessor.from_pretrained(built[family]).tokenizer
    for text in ["left lung", "yes", "no", "none", "left", "right", "3", "12", "Right kidney."]:
        assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert 1000 <= tok.backend_tokenizer.get_vocab_size(with_added_tokens=False) <= 2500


@pytest.mark.parametrize("family", FAMILIES)
def test_seed_determinism(family: str, built: dict[str, Path], tmp_path: Path) -> None:
    same = build_tiny_model(family, tmp_path / "same", seed=0)
    other = build_tiny_model(family, tmp_path / "other", seed=1)
    weights = (built[family] / "model.safetensors").read_bytes()
    assert (same / "model.safetensors").read_bytes() == weights
    assert (other / "model.safetensors").read_bytes() != weights
    assert (same / "tokenizer.json").read_bytes() == (built[family] / "tokenizer.json").read_bytes()


def test_unknown_family(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gpt-5.*llava"):
        build_tiny_model("gpt-5", tmp_path)
