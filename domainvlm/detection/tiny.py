"""Tiny, randomly initialised detectors and a CLIP dual encoder, built offline for tests.

Real OWLv2, OWL-ViT, Grounding DINO and CLIP checkpoints weigh hundreds of megabytes and live
on the Hub. `build_tiny_detector` writes a small random instance of the real transformers
architecture with its real processor class and a locally trained tokenizer laid out the way the
model's code expects (FACTS.md), so every backend code path runs on a CPU in a second without
network access. The outputs are nonsense: the model card says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from domainvlm.atomic import new_folder, ordinary_modes

KINDS = ("owlv2", "owlvit", "grounding-dino", "clip")
TEXT_TOKENS = 32  # the CLIP/OWL text tower's positions; OWL pads every prompt to this length
DINO_TEXT_TOKENS = 32  # Grounding DINO's max_text_len: all prompts together, with [CLS]/[SEP]
IMAGE_SIDE = 64  # pixels the vision towers see (patch 8: an 8x8 grid, 64 OWL boxes)

_CARD = """---
library_name: transformers
tags: [domainvlm, tiny-random, test]
---
# tiny-random-{kind}

A randomly initialised, tiny `{arch}` ({params:,} parameters) built offline by
`domainvlm.detection.tiny.build_tiny_detector("{kind}", seed={seed})`, with a tokenizer trained
here on a small built-in corpus. Its boxes, scores and embeddings are random: use it only for
tests and smoke runs, never for predictions.
"""


def _clip_tokenizer() -> Any:
    """Byte-level BPE wrapped as CLIP's: `<bos> text <eos>`, pad id 0, and EOS the highest id
    (OWL pools the text at `input_ids.argmax(-1)`; OWL treats a query whose first id is 0 as
    padding, so BOS is not 0)."""
    from tokenizers import processors

    from domainvlm.models.tokenizer import train_tokenizer

    tok = train_tokenizer(["<pad>", "<bos>"], pad_token="<pad>", bos_token="<bos>")
    tok.add_special_tokens({"eos_token": "<eos>"})  # appended: the highest id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>",
        special_tokens=[("<bos>", tok.bos_token_id), ("<eos>", tok.eos_token_id)])
    tok.model_max_length = TEXT_TOKENS
    return tok


def _bert_vocab() -> list[str]:
    """A WordPiece vocab in BERT-base-uncased's layout, which Grounding DINO hard-codes:
    [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103, then ASCII punctuation and digits
    from 999 (so "." is 1012 and "?" is 1029), then letters, their ## forms and whole words."""
    from domainvlm.models.tokenizer import _corpus

    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)]
    vocab += ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[unused{i}]" for i in range(99, 99 + 999 - len(vocab))]
    vocab += [chr(c) for c in range(0x21, 0x7F) if not chr(c).isupper()]
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    words = {w.strip(".,?!:;()[]-/%+=").lower() for line in _corpus() for w in line.split()}
    words |= {"metal", "wooden", "mug", "can", "ball", "empty", "photo"}
    return vocab + sorted(w for w in words if len(w) > 1 and w not in vocab)


def _grounding_dino_tokenizer() -> Any:
    from transformers import BertTokenizer

    vocab = {token: index for index, token in enumerate(_bert_vocab())}
    return BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=DINO_TEXT_TOKENS)


def _towers(tok: Any) -> dict[str, Any]:
    """CLIP-style text and vision tower sizes shared by CLIP, OWLv2 and OWL-ViT."""
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2,
            "max_position_embeddings": TEXT_TOKENS, "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "image_size": IMAGE_SIDE, "patch_size": 8}
    # OWL's class head compares projected text with a text-width image embedding: equal widths
    return {"text_config": text, "vision_config": vision, "projection_dim": 32,
            "initializer_range": 0.02}


def _clip() -> tuple[Any, Any]:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = _clip_tokenizer()
    side = {"height": IMAGE_SIDE, "width": IMAGE_SIDE}
    images = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIDE}, crop_size=side)
    return CLIPModel(CLIPConfig(**_towers(tok))), CLIPProcessor(images, tok)


def _wider_boxes(model: Any) -> Any:
    """Random OWL box heads draw each box one patch wide; widen them to ~2 patches so that
    neighbours overlap, as a trained OWL's boxes do, and non-maximum suppression has work."""
    import torch

    with torch.no_grad():
        model.box_head.dense2.bias[2:] = 1.0  # added to the log-odds of width and height
    return model


def _owlv2() -> tuple[Any, Any]:
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    tok = _clip_tokenizer()
    images = Owlv2ImageProcessor(size={"height": IMAGE_SIDE, "width": IMAGE_SIDE})
    model = _wider_boxes(Owlv2ForObjectDetection(Owlv2Config(**_towers(tok))))
    return model, Owlv2Processor(images, tok)


def _owlvit() -> tuple[Any, Any]:
    from transformers import (
        OwlViTConfig,
        OwlViTForObjectDetection,
        OwlViTImageProcessor,
        OwlViTProcessor,
    )

    tok = _clip_tokenizer()
    side = {"height": IMAGE_SIDE, "width": IMAGE_SIDE}
    images = OwlViTImageProcessor(size=side, crop_size=side)
    model = _wider_boxes(OwlViTForObjectDetection(OwlViTConfig(**_towers(tok))))
    return model, OwlViTProcessor(images, tok)


def _grounding_dino() -> tuple[Any, Any]:
    from transformers import (
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    tok = _grounding_dino_tokenizer()
    backbone = {"model_type": "swin", "image_size": IMAGE_SIDE, "patch_size": 4,
                "embed_dim": 8, "depths": [1, 1, 1], "num_heads": [1, 1, 1], "window_size": 4,
                "out_indices": [2, 3]}
    text = {"model_type": "bert", "vocab_size": len(tok), "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "pad_token_id": tok.pad_token_id}
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, num_queries=20, d_model=32,
        encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_feature_levels=2,
        encoder_n_points=2, decoder_n_points=2, max_text_len=DINO_TEXT_TOKENS)
    images = GroundingDinoImageProcessor(
        size={"shortest_edge": IMAGE_SIDE, "longest_edge": 2 * IMAGE_SIDE})
    return GroundingDinoForObjectDetection(config), GroundingDinoProcessor(images, tok)


_BUILDERS = {"owlv2": _owlv2, "owlvit": _owlvit, "grounding-dino": _grounding_dino,
             "clip": _clip}


def build_tiny_detector(kind: Literal["owlv2", "owlvit", "grounding-dino", "clip"],
                        output: Path | str, *, seed: int = 0) -> Path:
    """Write a tiny random `kind` model, its processor and a model card to the new folder
    `output` (all or nothing); the same `seed` gives the same weights. Detectors load with
    `domainvlm.detection.backends.load_backend`; "clip" with `AutoModel` + `AutoProcessor`.
    The caller's torch RNG is left alone."""
    if kind not in _BUILDERS:
        raise ValueError(f"unknown tiny detector kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    import torch

    output = Path(output)
    with new_folder(output) as partial, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = _BUILDERS[kind]()
        model.save_pretrained(partial)
        processor.save_pretrained(partial)
        params = sum(p.numel() for p in model.parameters())
        card = _CARD.format(kind=kind, arch=type(model).__name__, params=params, seed=seed)
        (partial / "README.md").write_text(card)
        ordinary_modes(partial.glob("*.safetensors"))
    return output
