"""Randomly initialised instances of each supported VLM architecture, built offline.

A builder makes a real transformers model class of a family's architecture at a chosen size,
with a locally trained tokenizer (`domainvlm.models.tokenizer`), the family's real special tokens,
chat template (`domainvlm.models.chat_templates`) and processor classes, so it loads through
exactly the path a user's hub model takes. The nano model is pretrained from one
(`domainvlm.nano`), and the tiny-model factory (`domainvlm.tiny`) writes them for tests and
smoke runs. Builders are keyed by the family registry's names (`domainvlm.families`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainvlm.atomic import ordinary_modes
from domainvlm.models import chat_templates as templates
from domainvlm.models.tokenizer import llama_tokenizer, train_tokenizer

FAST_VLM_STRIDE = 32  # FastViT's last feature map: one image token per 32x32 pixels


@dataclass(frozen=True)
class ModelSize:
    """Widths and depths (MLPs are 2x wide; 4 LM heads, 2 of them KV; 2 ViT heads).

    `grid` multiplies the patches per image side, so image tokens grow by grid²: a 64 px LLaVA
    image is 4x4 patches of 16 px at grid 1 and 8x8 patches of 8 px at grid 2.
    """

    hidden: int = 64  # language-model width
    layers: int = 2  # language-model decoder layers
    vision_hidden: int = 32
    vision_layers: int = 2
    grid: int = 1
    # FastVLM's convolutional tower (timm FastViT): blocks and widths of its four stages.
    conv_layers: tuple[int, ...] = (1, 1, 1, 1)
    conv_widths: tuple[int, ...] = (32, 64, 128, 256)


# "tiny" (~280 k parameters; ~1 M for FastVLM, whose FastViT tower is 0.7 M) for tests; "small"
# (~5 M, 64 image tokens for LLaVA at 64 px; 7.7 M for FastVLM) gives benchmarks a per-step
# cost dominated by the model rather than by Python overhead.
SIZES = {
    "tiny": ModelSize(),
    "small": ModelSize(hidden=256, layers=6, vision_hidden=128, vision_layers=4, grid=2,
                       conv_layers=(2, 2, 4, 2), conv_widths=(48, 96, 192, 384)),  # FastViT-T8
}


def _text_config(dims: ModelSize) -> dict[str, Any]:
    return {"hidden_size": dims.hidden, "intermediate_size": 2 * dims.hidden,
            "num_hidden_layers": dims.layers, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 2048}


def _vision_config(dims: ModelSize) -> dict[str, Any]:
    return {"hidden_size": dims.vision_hidden, "intermediate_size": 2 * dims.vision_hidden,
            "num_hidden_layers": dims.vision_layers}


# LLaVA processors: CLIP's CLS feature is dropped ("default"), so tokens = (size / patch)^2.
_LLAVA_PROC = {"vision_feature_select_strategy": "default", "num_additional_image_tokens": 1}


# --- shared model pieces -----------------------------------------------------------------------
def _text_kwargs(tokenizer: Any, dims: ModelSize, **extra: Any) -> dict[str, Any]:
    """A decoder of `dims` whose special ids match the tokenizer."""
    ids = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")}
    return {"vocab_size": len(tokenizer), **_text_config(dims), **ids, **extra}


def _clip(size: int, patch: int, dims: ModelSize) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        **_vision_config(dims), num_attention_heads=2, image_size=size, patch_size=patch,
        projection_dim=32,
    )


def _clip_processor(size: int, cls: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
    from transformers import CLIPImageProcessor

    crop = {"height": size, "width": size}
    return (cls or CLIPImageProcessor)(size={"shortest_edge": size}, crop_size=crop, **kwargs)


# --- per-family builders, each returning (model, processor) ------------------------------------
Built = tuple[Any, Any]


def _llava(size: int, dims: ModelSize) -> Built:
    import transformers as tf

    tok, patch = llama_tokenizer(), size // (4 * dims.grid)
    images = _clip_processor(size)
    proc = tf.LlavaProcessor(
        images, tok, patch_size=patch, chat_template=templates.LLAVA, **_LLAVA_PROC
    )
    config = tf.LlavaConfig(
        vision_config=_clip(size, patch, dims),
        text_config=tf.LlamaConfig(**_text_kwargs(tok, dims)),
        image_token_index=tok.image_token_id,
        vision_feature_select_strategy="default",
        image_seq_length=(size // patch) ** 2,
    )
    return tf.LlavaForConditionalGeneration(config), proc


def _fast_vlm(size: int, dims: ModelSize) -> Built:
    """FastVLM: a timm FastViT tower (RepMixer convolution blocks, no attention) + Llama.

    One image token per 32 px cell of the tower's last feature map, no CLS token.
    """
    import transformers as tf

    tok = llama_tokenizer()
    proc = tf.LlavaProcessor(
        _clip_processor(size), tok, patch_size=FAST_VLM_STRIDE, chat_template=templates.LLAVA,
        vision_feature_select_strategy="full", num_additional_image_tokens=0,
    )
    tower = tf.TimmWrapperConfig(
        # FastViT's final 1x1 block doubles the last stage's width (timm's cls_ratio=2).
        architecture="fastvit_t8", do_pooling=False, hidden_size=2 * dims.conv_widths[-1],
        model_args={"layers": dims.conv_layers, "embed_dims": dims.conv_widths},
    )
    config = tf.FastVlmConfig(
        vision_config=tower,
        text_config=tf.LlamaConfig(**_text_kwargs(tok, dims)),
        image_token_index=tok.image_token_id,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_seq_length=(size // FAST_VLM_STRIDE) ** 2,
        projector_hidden_act="gelu",
    )
    return tf.FastVlmForConditionalGeneration(config), proc


def _llava_next(size: int, dims: ModelSize) -> Built:
    import transformers as tf

    tok, patch = llama_tokenizer(), size // (4 * dims.grid)
    pins = [[size, size], [size, 2 * size], [2 * size, size], [2 * size, 2 * size]]
    images = _clip_processor(size, tf.LlavaNextImageProcessor, image_grid_pinpoints=pins)
    proc = tf.LlavaNextProcessor(
        images, tok, patch_size=patch, chat_template=templates.LLAVA_NEXT, **_LLAVA_PROC
    )
    config = tf.LlavaNextConfig(
        vision_config=_clip(size, patch, dims),
        text_config=tf.MistralConfig(**_text_kwargs(tok, dims, head_dim=dims.hidden // 4)),
        image_token_index=tok.image_token_id,
        image_grid_pinpoints=pins,
        image_seq_length=(size // patch) ** 2,
    )
    return tf.LlavaNextForConditionalGeneration(config), proc


_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>"]
_QWEN_SPECIALS += ["<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


def _qwen(size: int, dims: ModelSize, v25: bool) -> Built:
    """Qwen2-VL and Qwen2.5-VL share tokenizer, processors and text model; only the ViT differs."""
    import transformers as tf

    tok = train_tokenizer(_QWEN_SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    patch, merge = max(size // (8 * dims.grid), 1), 2
    pixels = {"shortest_edge": (size // 2) ** 2, "longest_edge": size**2}
    grid = {"patch_size": patch, "merge_size": merge, "temporal_patch_size": 2, "size": pixels}
    images, videos = tf.Qwen2VLImageProcessor(**grid), tf.Qwen2VLVideoProcessor(**grid)
    vision = {"depth": dims.vision_layers, "num_heads": 2, "patch_size": patch,
              "spatial_merge_size": merge}
    # mrope_section must sum to head_dim / 2 = (hidden / 4 heads) / 2: [2, 3, 3] at width 64.
    half = dims.hidden // 8
    section = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}
    text = _text_kwargs(tok, dims, rope_parameters=rope, bos_token_id=tok.pad_token_id)
    # The config defaults are the real 151k-vocab ids; point them at ours.
    names = {"image": "image_pad", "video": "video_pad", "vision_start": "", "vision_end": ""}
    special = {
        f"{key}_token_id": tok.convert_tokens_to_ids(f"<|{token or key}|>")
        for key, token in names.items()
    }
    if v25:
        vcfg = tf.Qwen2_5_VLVisionConfig(
            **vision,
            hidden_size=dims.vision_hidden,
            intermediate_size=2 * dims.vision_hidden,
            out_hidden_size=dims.hidden,
            window_size=2 * patch * merge,
            fullatt_block_indexes=[1],
        )
        config = tf.Qwen2_5_VLConfig(
            vision_config=vcfg, text_config=tf.Qwen2_5_VLTextConfig(**text), **special
        )
        proc_cls, model_cls = tf.Qwen2_5_VLProcessor, tf.Qwen2_5_VLForConditionalGeneration
    else:
        vcfg = tf.Qwen2VLVisionConfig(
            **vision, embed_dim=dims.vision_hidden, hidden_size=dims.hidden, mlp_ratio=2
        )
        config = tf.Qwen2VLConfig(
            vision_config=vcfg, text_config=tf.Qwen2VLTextConfig(**text), **special
        )
        proc_cls, model_cls = tf.Qwen2VLProcessor, tf.Qwen2VLForConditionalGeneration
    proc = proc_cls(images, tok, videos, chat_template=templates.QWEN)
    return model_cls(config), proc


def _idefics3(size: int, dims: ModelSize) -> Built:
    import transformers as tf

    # Without the <row_i_col_j> tokens the processor's tile markers would be silently split.
    grid = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    chat = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>"]
    image = ["<fake_token_around_image>", "<image>", "<global-img>"]
    tok = train_tokenizer(
        chat + image + grid,
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
    )
    patch, scale = size // (4 * dims.grid), 2
    # Inputs are resized to 2*size and split into 2x2 tiles of `size` plus a global view.
    images = tf.Idefics3ImageProcessor(
        size={"longest_edge": 2 * size}, max_image_size={"longest_edge": size}
    )
    proc = tf.Idefics3Processor(
        images,
        tok,
        image_seq_len=(size // patch) ** 2 // scale**2,
        chat_template=templates.IDEFICS3,
    )
    vision = tf.Idefics3VisionConfig(
        **_vision_config(dims), num_attention_heads=2, image_size=size, patch_size=patch
    )
    config = tf.Idefics3Config(
        vision_config=vision,
        text_config=tf.LlamaConfig(**_text_kwargs(tok, dims)),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
        pad_token_id=tok.pad_token_id,
    )
    return tf.Idefics3ForConditionalGeneration(config), proc


def _paligemma(size: int, dims: ModelSize) -> Built:
    import transformers as tf

    tok = train_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"],
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        add_bos_token=True,
        extra_special_tokens={"image_token": "<image>"},
    )
    patch = size // (4 * dims.grid)
    images = tf.SiglipImageProcessor(
        size={"height": size, "width": size}, image_seq_length=(size // patch) ** 2
    )
    proc = tf.PaliGemmaProcessor(images, tok)  # adds 1024 <locXXXX> + 128 <segXXX> tokens
    vision = tf.SiglipVisionConfig(
        **_vision_config(dims), num_attention_heads=2, image_size=size, patch_size=patch
    )
    text = tf.GemmaConfig(
        **_text_kwargs(tok, dims, num_key_value_heads=1, head_dim=dims.hidden // 4)
    )
    config = tf.PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.image_token_id,
        vocab_size=len(tok),
        projection_dim=dims.hidden,
        hidden_size=dims.hidden,
    )
    return tf.PaliGemmaForConditionalGeneration(config), proc


def _mllama(size: int, dims: ModelSize) -> Built:
    """Llama 3.2 Vision: the text model reads the image through cross-attention layers, so the
    prompt holds one <|image|> token per image and the processor returns a per-token
    cross-attention mask of shape (1, L, images, tiles), not image tokens in the sequence."""
    import transformers as tf

    tok = train_tokenizer(
        ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>",
         "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|image|>", "<|python_tag|>"],
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|finetune_right_pad_id|>",
    )
    tiles, patch = 2, size // (4 * dims.grid)
    images = tf.MllamaImageProcessor(size={"height": size, "width": size}, max_image_tiles=tiles)
    proc = tf.MllamaProcessor(images, tok, chat_template=templates.MLLAMA)
    vision = tf.MllamaVisionConfig(
        hidden_size=dims.vision_hidden, intermediate_size=2 * dims.vision_hidden,
        num_hidden_layers=dims.vision_layers, num_global_layers=1, attention_heads=2,
        image_size=size, patch_size=patch, max_num_tiles=tiles,
        intermediate_layers_indices=[0], vision_output_dim=2 * dims.vision_hidden,
        supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],  # those of max_image_tiles=2
    )
    text = tf.MllamaTextConfig(**_text_kwargs(tok, dims), cross_attention_layers=[1])
    config = tf.MllamaConfig(vision_config=vision, text_config=text,
                             image_token_index=tok.convert_tokens_to_ids("<|image|>"))
    model = tf.MllamaForConditionalGeneration(config)
    # The gates of the cross-attention layers start closed (tanh(0) = 0), so an untrained model
    # ignores its images and no gradient reaches the tower; open them, as training would.
    for name, param in model.named_parameters():
        if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
            param.data.fill_(1.0)
    return model, proc


# Keyed by the family registry's names (`domainvlm.families.known_family_names`; a test keeps
# the two equal).
BUILDERS: dict[str, Callable[[int, ModelSize], Built]] = {
    "llava": _llava,
    "llava-next": _llava_next,
    "qwen2-vl": lambda size, dims: _qwen(size, dims, v25=False),
    "qwen2.5-vl": lambda size, dims: _qwen(size, dims, v25=True),
    "idefics3": _idefics3,
    "paligemma": _paligemma,
    "fast-vlm": _fast_vlm,
    "mllama": _mllama,
}

_END_OF_TURN = {"mllama": "<|eot_id|>"}


def write_random_model(family: str, output: Path | str, *, seed: int = 0, image_size: int = 64,
                       size: str = "tiny") -> Any:
    """Write a random `family` model of `size` (one of `SIZES`) and its processor to `output`;
    return the model.

    The result loads with `AutoModelForImageTextToText` / `AutoProcessor`, and generation stops
    at the family's end-of-turn token; the same `seed` gives byte-identical files. The caller's
    torch RNG is left alone.
    """
    if family not in BUILDERS:
        from domainvlm.families import known_family_names

        raise ValueError(f"unknown model family {family!r}; valid families: "
                         f"{', '.join(known_family_names())}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; valid sizes: {', '.join(SIZES)}")
    dims = SIZES[size]
    if image_size < 16 * dims.grid or image_size % (16 * dims.grid):
        raise ValueError(
            f"image_size must be a positive multiple of {16 * dims.grid}, got {image_size}"
        )
    import torch

    with torch.random.fork_rng(devices=[]):  # seed locally, leave the caller's RNG alone
        torch.manual_seed(seed)
        model, processor = BUILDERS[family](image_size, dims)
    tok = processor.tokenizer
    gen = model.generation_config  # so generate() stops at the end-of-turn token
    gen.bos_token_id, gen.eos_token_id = tok.bos_token_id, tok.eos_token_id
    if family in _END_OF_TURN:  # a turn marker apart from eos: generation stops at either
        gen.eos_token_id = [tok.convert_tokens_to_ids(_END_OF_TURN[family]), tok.eos_token_id]
    gen.pad_token_id = tok.pad_token_id
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    ordinary_modes(out.glob("*.safetensors"))  # written 0600 by safetensors 0.8
    return model
