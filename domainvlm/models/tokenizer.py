"""The byte-level BPE tokenizer of every randomly initialised model we build, trained here on a
small built-in English corpus (shapes, findings, organs, answers), so no hub download is needed.
"""

from __future__ import annotations

from typing import Any

_VOCAB_SIZE = 1500

# Slot fillers for the sentence templates below, one space-separated string per slot.
_SLOTS = {
    "c": "red green blue yellow black white grey gray orange purple pink brown dark bright",
    "s": "circle square triangle rectangle star oval dot line box ring cube sphere arrow",
    "p": "left right top bottom centre center middle upper lower above below near far front back "
    "inside outside corner edge side anterior posterior medial lateral",
    "o": "lung liver heart kidney spleen brain bone chest abdomen pelvis spine skull rib stomach "
    "bladder colon pancreas breast thyroid knee hip shoulder",
    "f": "lesion nodule mass tumor tumour fracture effusion opacity cyst edema haemorrhage "
    "hemorrhage calcification consolidation pneumothorax atelectasis infiltrate polyp abscess",
    "n": "zero one two three four five six seven eight nine ten eleven twelve many few",
    "m": "CT MRI X-ray xray ultrasound PET mammography radiograph",
    "a": "yes no none Yes No None true false unknown normal abnormal present absent",
}
# Different strides per slot so the fillers combine differently from line to line.
_STRIDES = {"c": 1, "s": 7, "p": 5, "o": 3, "f": 11, "n": 13, "m": 1, "a": 17}
_TEMPLATES = (
    "Is there a {f} in the {p} {o}? {a}",
    "How many {c} {s}s are there? {n}",
    "There are {n} {c} {s}s on the {p} side of the image.",
    "What colour is the {s}? {c}",
    "Where is the {f}? {p}",
    "Which organ is shown in this {m} scan? {o}",
    "The {m} image shows a {f} in the {p} {o}.",
    "Does the {o} look normal? {a}",
    "What is the abnormality in the {o}? {f}",
    "Count the {s}s: {d}",
    "Are the {s}s {c} or not? {a}",
    "Findings: {f} of the {p} {o}, size {d} mm. Impression: {a}.",
    "Describe the picture. A {c} {s} is to the {p} of a {s}.",
    "Answer with a single word. {a}",
    "The robot sees {n} objects; the {c} one is on the {p}.",
)
_EXTRA = (
    "what where which who when why how many much is are was were does do did can could should "
    "there this that these those the a an of in on at to from with without and or not "
    "image picture photo scan view slice axial coronal sagittal patient doctor report question "
    "answer describe show find count locate bounding box object camera robot gripper table cup "
    "bottle person hand door floor wall benign malignant acute chronic mild moderate severe small "
    "large round irregular smooth contrast enhanced density signal. , ? ! : ; ( ) [ ] - / % + ="
)


def _corpus() -> list[str]:
    """Deterministic sentences covering the answer words the tests and SDK examples use."""
    slots = {key: words.split() for key, words in _SLOTS.items()}
    lines = [_EXTRA, " ".join(str(i) for i in range(101)), "0 1 2 3 4 5 6 7 8 9 10 100 1000"]
    for words in slots.values():
        lines += [" ".join(words), " ".join(w.capitalize() for w in words)]
    for i in range(1200):
        fields = {k: w[(i * _STRIDES[k]) % len(w)] for k, w in slots.items()}
        lines.append(_TEMPLATES[i % len(_TEMPLATES)].format(d=str(i % 37), **fields))
    return lines


def train_tokenizer(specials: list[str], **kwargs: Any) -> Any:
    """Train a byte-level BPE (lossless: any answer string round-trips through decode)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
        **kwargs,
    )


def llama_tokenizer() -> Any:
    """Llama/Mistral layout: <unk> <s> </s>, bos added, plus <image> and a separate <pad>."""
    return train_tokenizer(
        ["<unk>", "<s>", "</s>", "<pad>", "<image>"],
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        add_bos_token=True,
        extra_special_tokens={"image_token": "<image>"},
    )

