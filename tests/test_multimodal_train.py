"""Fine-tuning the tiny vision-language model through `invoke train` on a generated image task (the colour of a
square -> its name): the loss falls, the saved adapter answers from the image, the run keeps its processor, and
the prompt a server builds for an image is the training example's own tokens. One LoRA run, shared with the
serving tests (tests/conftest.py)."""

import json

import pytest
import torch
from colour_squares import COLOURS, QUESTIONS, square, write_colour_set
from conftest import VL_RUN, compose
from peft import PeftModel
from transformers import AutoProcessor

from onestop.core.errors import OnestopError
from onestop.data.media import collate_media, open_image
from onestop.data.prepare import prepare
from onestop.losses import token_loss_sum
from onestop.models import load_causal_lm, load_processor
from onestop.models.processor import text_tokenizer
from onestop.training.train import train

RUN = VL_RUN


@pytest.fixture(scope="module")
def colours(colour_set):
    return colour_set


@pytest.fixture(scope="module")
def lora_run(vl_lora_run):
    return vl_lora_run


def ask(processor, image, question="What colour is the square?"):
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = text_tokenizer(processor).apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return processor(text=[text], images=[image], return_tensors="pt")


def test_the_adapter_answers_from_the_image(lora_run):
    processor = AutoProcessor.from_pretrained(lora_run / "adapter")  # the run keeps its processor
    base = load_causal_lm(compose("model=tiny_vl").model)
    model = PeftModel.from_pretrained(base, lora_run / "adapter").eval()
    answers = {}
    for index, colour in enumerate(list(COLOURS) * 3):  # images never seen in training
        inputs = ask(processor, square(colour, seed=10_000 + index), QUESTIONS[index % len(QUESTIONS)])
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        answer = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        answers[(colour, index)] = answer
    right = sum(answer == colour for (colour, _), answer in answers.items())
    assert right >= 8, answers
    assert {answer for answer in answers.values()} == set(COLOURS)


def test_the_loss_falls_on_held_out_examples(lora_run, colours):
    metrics = json.loads((lora_run / "metrics.json").read_text())
    assert metrics["steps"] == 40
    cfg = compose(*RUN, f"data.path={colours}")
    processor = load_processor(cfg.model)
    held_out = prepare(cfg.data, processor, seed=cfg.seed).val
    batch = collate_media(list(held_out), processor)
    base = load_causal_lm(cfg.model).eval()
    with torch.no_grad():
        before, tokens = token_loss_sum(base, batch)
        model = PeftModel.from_pretrained(load_causal_lm(cfg.model), lora_run / "adapter").eval()
        after, _ = token_loss_sum(model, batch)
    assert before / tokens > 5 and after / tokens < 0.5 * (before / tokens)
    assert metrics["val_loss"] == pytest.approx(float(after / tokens), rel=0.05)


def test_the_served_prompt_is_the_training_examples_tokens(tmp_path):
    path = write_colour_set(tmp_path, 1)
    record = json.loads(path.read_text())
    cfg = compose(*RUN, f"data.path={path}", "data.val_ratio=0")
    processor = load_processor(cfg.model)
    row = prepare(cfg.data, processor, seed=cfg.seed).train[0]
    answer_start = row["labels"].index(next(label for label in row["labels"] if label != -100))
    image, question = (part for part in record["messages"][0]["content"])
    served = ask(processor, open_image(str(tmp_path / image["image_url"]["url"])), question["text"])
    assert served["input_ids"][0].tolist() == row["input_ids"][:answer_start]


def test_full_fine_tuning_saves_the_model_and_its_processor(colours, tmp_path):
    result = train(
        compose(*RUN, f"data.path={colours}", "method=full", "trainer.max_steps=2", run_dir=tmp_path / "run")
    )
    saved = result.run_dir / "model"
    assert (saved / "model.safetensors").is_file() and (saved / "processor_config.json").is_file()
    assert type(AutoProcessor.from_pretrained(saved)).__name__ == "LlavaProcessor"


def test_packing_images_is_refused_in_one_line(colours, tmp_path):
    with pytest.raises(
        OnestopError, match=r"config key 'data.packing': cannot pack exactly: model=tiny_vl \(llava\) reads"
    ):
        train(compose(*RUN, f"data.path={colours}", "data.packing=true", run_dir=tmp_path / "run"))
