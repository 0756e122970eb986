"""Rebuild the tiny random vision-language model, its processor and tokenizer committed beside this file.

    python tests/assets/make_tiny_llava.py

The real LLaVA architecture (transformers' LlavaForConditionalGeneration: a SigLIP vision tower, a two-layer
projector, a Qwen2 language model) at toy size, random weights (seed 0). The tokenizer is tiny-qwen2's with
LLaVA's `<image>` token added; the image processor is SigLIP's (Pillow backend): every image is resized to
28x28, 2x2 patches of 14 pixels, so an image is 4 image tokens.

Why LLaVA and not Qwen2.5-VL here: transformers builds the Qwen-VL and InternVL processors with a video
processor, which needs torchvision; LLaVA's and Gemma 3's processors need Pillow only.
"""

import shutil
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

HERE = Path(__file__).parent
OUT = HERE / "tiny-llava"
IMAGE_TOKEN = "<image>"
IMAGE_SIZE, PATCH = 28, 14
# ChatML, as tiny-qwen2's, where a message's content may also be a list of parts: text parts are written out,
# an image part becomes the placeholder that the processor widens to the image's tokens.
CHATML_VL_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] in ('image', 'image_url') %}{{ '<image>' }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_processor() -> LlavaProcessor:
    tokenizer = AutoTokenizer.from_pretrained(HERE / "tiny-qwen2")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", IMAGE_TOKEN]})
    tokenizer.chat_template = CHATML_VL_TEMPLATE
    image_processor = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        image_token=IMAGE_TOKEN,
        chat_template=CHATML_VL_TEMPLATE,
    )


def main() -> None:
    processor = build_processor()
    tokenizer = processor.tokenizer
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # Wider than the default 0.02: with embeddings tied to the output head, 0.02 bounds a toy model's logits near
        # zero, and an adapter (which cannot rescale the head) could never make any answer likely.
        initializer_range=0.25,
    )
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    shutil.rmtree(OUT, ignore_errors=True)
    model.save_pretrained(OUT)
    processor.save_pretrained(OUT)
    print(f"wrote {OUT}: {sum(p.numel() for p in model.parameters())} parameters, vocab {len(tokenizer)}")


if __name__ == "__main__":
    main()
