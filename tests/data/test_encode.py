"""Label masking, truncation and batching on every family's real processor."""

from __future__ import annotations

import pytest
import torch
from testkit import ALL_FAMILIES
from transformers import AutoConfig, AutoProcessor

from domainvlm.data.collate import collate
from domainvlm.data.encode import IGNORE_INDEX, encode_record, image_token_id
from domainvlm.data.prompting import PromptFormat, user_message
from domainvlm.data.records import Record
from domainvlm.errors import DataError
from domainvlm.families import family_for
from domainvlm.nano.shapes_world import Shape, draw_scene


def prompt_format(folder) -> PromptFormat:
    family = family_for(AutoConfig.from_pretrained(folder).model_type)
    return PromptFormat.from_processor(AutoProcessor.from_pretrained(folder), family)


def scene(colour="red", side="left"):
    import random

    return draw_scene([Shape(colour, "square", side)], 64, random.Random(0))


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("answer", ["left lung", "3", "no"])
def test_only_answer_and_end_of_turn_carry_loss(tiny_models, family, answer):
    fmt = prompt_format(tiny_models(family))
    record = Record([scene()], "Where is the lesion?", answer, "test:1")
    sample = encode_record(record, fmt, max_length=512)
    labels = sample["labels"]
    kept = labels[labels != IGNORE_INDEX]
    tokenizer = fmt.processor.tokenizer
    assert tokenizer.decode(kept[:-1]).strip() == answer
    assert int(kept[-1]) == fmt.end_of_turn_id
    # Everything before the answer (system, prompt, image tokens) is masked.
    first = int((labels != IGNORE_INDEX).nonzero()[0])
    assert (labels[:first] == IGNORE_INDEX).all()
    assert (labels[first:] != IGNORE_INDEX).all()
    assert (sample["input_ids"][labels != IGNORE_INDEX] == kept).all()
    img = image_token_id(fmt.processor)
    assert (sample["input_ids"] == img).sum() > 0
    assert (labels[sample["input_ids"] == img] == IGNORE_INDEX).all()


def template_answer_tokens(fmt: PromptFormat, question: str, answer: str) -> list[int]:
    """What the model must write for `answer`, by the model's own rules: the tokens the chat
    template marks as the assistant's (its {% generation %} block, end of turn included), or
    for PaliGemma, which has no template, the tokens its processor labels as the suffix."""
    processor, tokenizer = fmt.processor, fmt.processor.tokenizer
    if not getattr(processor, "chat_template", None):
        out = processor(text=question, images=[scene()], suffix=answer, return_tensors="pt")
        labels = out["labels"][0]
        return labels[labels != IGNORE_INDEX].tolist()
    messages = [user_message(question, 1),
                {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    out = tokenizer.apply_chat_template(messages, chat_template=processor.chat_template,
                                        tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    return [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("answer", ["left lung", "3", "no"])
def test_trained_tokens_are_what_the_template_writes_for_the_answer(tiny_models, family, answer):
    fmt = prompt_format(tiny_models(family))
    question = "Where is the lesion?"
    sample = encode_record(Record([scene()], question, answer, "test:1"), fmt, max_length=512)
    trained = sample["labels"][sample["labels"] != IGNORE_INDEX].tolist()
    expected = template_answer_tokens(fmt, question, answer)
    tokenizer = fmt.processor.tokenizer
    assert tokenizer.convert_ids_to_tokens(trained) == tokenizer.convert_ids_to_tokens(expected)


def test_a_tiny_family_ends_its_turn_with_a_special_token_the_tokenizer_does_not_name(
        tiny_models):
    """So that the test above sees a marker found only among the added special tokens."""
    tokenizer = prompt_format(tiny_models("mllama")).processor.tokenizer
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert eot not in tokenizer.all_special_ids
    assert tokenizer.added_tokens_decoder[eot].special


@pytest.mark.parametrize("family", [f for f in ALL_FAMILIES if f != "paligemma"])
@pytest.mark.parametrize("n_images", [1, 2])
def test_a_sample_is_what_the_processor_gives_for_the_whole_conversation(tiny_models, family,
                                                                         n_images):
    """Every key (masks of any shape, token types, image tensors) of a sample, answer
    appended, equals the processor's own output for the prompt text followed by the answer
    and the end-of-turn marker: the processor, not a rule of ours, says what answer tokens
    carry (PaliGemma, whose answers are marked as a suffix, is checked above)."""
    fmt = prompt_format(tiny_models(family))
    images = [scene(), scene("blue", "right")][:n_images]
    sample = encode_record(Record(images, "Where is it?", "left lung", "t:1"), fmt, 4096)
    tokenizer = fmt.processor.tokenizer
    text = (fmt.prompt("Where is it?", n_images) + fmt.answer_prefix + "left lung"
            + tokenizer.convert_ids_to_tokens(fmt.end_of_turn_id))
    whole = fmt.processor(**fmt.processor_inputs(text, [images]), return_tensors="pt")
    assert set(sample) - {"labels"} == set(whole)
    for key, value in whole.items():
        per_token = value.shape[:2] == (1, len(sample["input_ids"]))
        assert torch.equal(value[0] if per_token else value, sample[key]), key


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_prompt_matches_what_generation_sees(tiny_models, family):
    """The prompt part of a training sample is token for token the inference prompt."""
    fmt = prompt_format(tiny_models(family))
    record = Record([scene()], "What colour is the square?", "red", "test:1")
    sample = encode_record(record, fmt, max_length=512)
    prompt = fmt.prompt(record.question, 1)
    inference = fmt.processor(**fmt.processor_inputs(prompt, [[scene()]]), return_tensors="pt")
    n = inference["input_ids"].shape[1]
    assert torch.equal(sample["input_ids"][:n], inference["input_ids"][0])


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_too_long_is_an_error_naming_the_record_not_a_cut(tiny_models, family):
    fmt = prompt_format(tiny_models(family))
    record = Record([scene()], "Where is it?", "left", "train.jsonl:7")
    needed = len(encode_record(record, fmt, max_length=4096)["input_ids"])
    with pytest.raises(DataError, match=r"train.jsonl:7.*image tokens.*--max-length"):
        encode_record(record, fmt, max_length=needed - 1)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_collate_pads_with_masked_labels_and_model_accepts_batch(tiny_models, family):
    from transformers import AutoModelForImageTextToText

    folder = tiny_models(family)
    fmt = prompt_format(folder)
    short = encode_record(Record([scene()], "Colour?", "red", "a:1"), fmt, 512)
    long = encode_record(Record([scene("blue", "right")], "What colour is the shape on the "
                                "right side of the image?", "blue square", "a:2"), fmt, 512)
    pad = fmt.processor.tokenizer.pad_token_id
    batch = collate([short, long], pad)
    n_short = len(short["input_ids"])
    assert batch["input_ids"].shape[0] == 2
    assert (batch["labels"][0, n_short:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][0, n_short:] == 0).all()
    model = AutoModelForImageTextToText.from_pretrained(folder)
    out = model(**batch)
    assert torch.isfinite(out.loss)


def row_losses(model, batch) -> list[float]:
    """Each row's summed answer-token loss."""
    import torch.nn.functional as F

    batch = dict(batch)
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits.float()
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:],
                             ignore_index=IGNORE_INDEX, reduction="none")
    return losses.sum(1).tolist()


@pytest.mark.parametrize("family", [f for f in ALL_FAMILIES if f != "paligemma"])
def test_rows_with_different_image_counts_batch_to_their_own_losses(tiny_models, family):
    from transformers import AutoModelForImageTextToText

    folder = tiny_models(family)
    fmt = prompt_format(folder)
    rows = [encode_record(Record([scene()], "Where is it?", "left lung", "b:1"), fmt, 1024),
            encode_record(Record([scene(), scene("blue", "right")], "Same colour?", "no",
                                 "b:2"), fmt, 1024)]
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    pad = fmt.processor.tokenizer.pad_token_id
    alone = [row_losses(model, collate([row], pad))[0] for row in rows]
    assert row_losses(model, collate(rows, pad)) == pytest.approx(alone, rel=1e-5)


@pytest.mark.parametrize("family", ["llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "idefics3",
                                    "mllama"])
def test_multi_image_records(tiny_models, family):
    fmt = prompt_format(tiny_models(family))
    one = encode_record(Record([scene()], "Same?", "no", "m:1"), fmt, 1024)
    two = encode_record(Record([scene(), scene("blue")], "Same?", "no", "m:2"), fmt, 1024)
    img = image_token_id(fmt.processor)
    assert (two["input_ids"] == img).sum() == 2 * (one["input_ids"] == img).sum()


def test_paligemma_marks_answer_tokens_as_suffix(tiny_models):
    fmt = prompt_format(tiny_models("paligemma"))
    sample = encode_record(Record([scene()], "colour", "red", "p:1"), fmt, 512)
    answer = sample["labels"] != IGNORE_INDEX
    assert (sample["token_type_ids"][answer] == 1).all()
    assert (sample["token_type_ids"][~answer] == 0).all()


def test_multi_image_refused_where_family_takes_one(tiny_models):
    fmt = prompt_format(tiny_models("paligemma"))
    with pytest.raises(DataError, match="p:2.*one image"):
        encode_record(Record([scene(), scene()], "q", "a", "p:2"), fmt, 512)


def test_unlisted_family_takes_the_generic_path(tiny_models):
    """A model type not in the registry still trains if its processor has a chat template."""
    from domainvlm.families import GENERIC

    processor = AutoProcessor.from_pretrained(tiny_models("qwen2-vl"))
    generic = PromptFormat.from_processor(processor, GENERIC)
    listed = prompt_format(tiny_models("qwen2-vl"))
    record = Record([scene()], "Which side?", "left", "g:1")
    a, b = encode_record(record, generic, 512), encode_record(record, listed, 512)
    assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["input_ids"], b["input_ids"])
    assert family_for("some_new_vlm") is GENERIC


def test_generic_path_without_chat_template_says_what_is_missing(tiny_models):
    from domainvlm.errors import ModelLoadError
    from domainvlm.families import GENERIC

    processor = AutoProcessor.from_pretrained(tiny_models("llava"))
    processor.chat_template = None
    with pytest.raises(ModelLoadError, match="no chat template.*processor.chat_template"):
        PromptFormat.from_processor(processor, GENERIC)
