"""The processor seam: one object from the model to data, training, evaluation and serving. A text model's is
its tokenizer, unchanged; the tiny vision-language model's is transformers' AutoProcessor around the same
tokenizer onestop prepares (its chat template, its tool format)."""

from conftest import compose
from PIL import Image

from onestop.models import load_causal_lm, load_processor, load_tokenizer
from onestop.models.processor import image_token_id, reads_images, text_tokenizer


def test_a_text_models_processor_is_its_tokenizer():
    model_cfg = compose("model=tiny").model
    processor, tokenizer = load_processor(model_cfg), load_tokenizer(model_cfg)
    assert type(processor) is type(tokenizer) and text_tokenizer(processor) is processor
    assert not reads_images(processor) and image_token_id(processor) is None
    text = "onestop: 一站式"
    assert processor(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert processor.chat_template == tokenizer.chat_template


def test_a_vision_language_models_processor_reads_images_with_onestops_tokenizer():
    model_cfg = compose("model=tiny_vl").model
    processor = load_processor(model_cfg)
    tokenizer = text_tokenizer(processor)
    assert reads_images(processor) and tokenizer.response_template  # the tool format is attached
    assert processor.chat_template == tokenizer.chat_template
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[Image.new("RGB", (32, 32), (255, 0, 0))], return_tensors="pt")
    assert int((inputs["input_ids"] == image_token_id(processor)).sum()) == 4  # 2x2 patches of the 28x28 image
    model = load_causal_lm(model_cfg)
    logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape
