"""Images in conversation data: OpenAI content parts and LLaMA-Factory's <image> + images layout read alike, from
relative paths, file:// and data: URLs; the report counts images and their tokens; a bad image, placeholders that
do not match the images, or image tokens that would be cut stop in one line naming file:line, or are counted
and dropped with data.on_error=skip."""

import base64
import io
import json

import pytest
from colour_squares import square, write_colour_set
from conftest import compose, run_invoke

from onestop.core.errors import OnestopError
from onestop.data.media import MEDIA_COLUMN, collate_media, row_images
from onestop.data.prepare import prepare
from onestop.models import load_processor
from onestop.models.processor import image_token_id, text_tokenizer

IMAGE_TOKENS = 4  # the tiny model's 28x28 images: 2x2 patches


@pytest.fixture(scope="module")
def processor():
    return load_processor(compose("model=tiny_vl").model)


def prepared(path, processor, *overrides, model="tiny_vl"):
    cfg = compose(f"model={model}", "data=messages", f"data.path={path}", "data.val_ratio=0", "data.cache=false",
                  *overrides)  # fmt: skip
    return prepare(cfg.data, processor, seed=0)


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def asked(content, answer="red", **fields):
    return {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": answer}], **fields}


def test_both_layouts_make_the_same_rows_and_the_report_counts_images(processor, tmp_path):
    parts = prepared(write_colour_set(tmp_path / "parts", 6, layout="parts"), processor)
    placeholders = prepared(write_colour_set(tmp_path / "lf", 6, layout="placeholders"), processor)
    for a, b in zip(parts.train, placeholders.train, strict=True):
        assert (a["input_ids"], a["labels"]) == (b["input_ids"], b["labels"])
    report = parts.report
    assert (report.images, report.media_tokens) == (6, 6 * IMAGE_TOKENS)
    assert "6 images (24 image tokens)" in report.summary()
    row = parts.train[0]
    assert row["input_ids"].count(image_token_id(processor)) == IMAGE_TOKENS
    answer = text_tokenizer(processor).decode([t for t in row["labels"] if t != -100])
    assert answer.split("<|im_end|>")[0] in {"red", "green", "blue"}  # the images' tokens carry no loss
    batch = collate_media(list(parts.train)[:3], processor)
    assert tuple(batch["pixel_values"].shape) == (3, 3, 28, 28) and MEDIA_COLUMN not in batch


def test_file_and_data_urls_and_text_only_turns_mix(processor, tmp_path):
    (tmp_path / "red.png").write_bytes(b"")
    square("red").save(tmp_path / "red.png")
    records = [
        asked(
            [
                {"type": "image_url", "image_url": {"url": f"file://{tmp_path / 'red.png'}"}},
                {"type": "text", "text": "Colour?"},
            ]
        ),  # fmt: skip
        asked(
            [
                {"type": "text", "text": "Colour?"},
                {"type": "image_url", "image_url": {"url": data_url(square("blue"))}},
            ],
            "blue",
        ),  # fmt: skip
        asked("No picture: say red."),
    ]
    data = prepared(write(tmp_path / "train.jsonl", records), processor)
    assert (data.report.images, data.report.train_records) == (2, 3)
    assert sorted(len(row_images(row)) for row in data.train) == [0, 1, 1]


BAD = {
    "placeholders and images differ": (
        asked("<image><image>Colour?", images=["red.png"]),
        r"train.jsonl:1: 2 <image> placeholder\(s\) in the text but 1 image\(s\)",
    ),
    "missing image": (
        asked("<image>Colour?", images=["nowhere.png"]),
        r"train.jsonl:1: images\[0\]: .*nowhere.png: no such",
    ),
    "unreadable image": (
        asked("<image>Colour?", images=["broken.png"]),
        r"train.jsonl:1: images\[0\]: .*not a readable image",
    ),
    "http image": (
        asked([{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]),
        r"train.jsonl:1: images\[0\]: https://example.com/a.png: http\(s\) images are not downloaded",
    ),
    "bad content part": (
        asked([{"type": "audio", "audio": "a.wav"}]),
        r"train.jsonl:1: messages\[0\]: a content part must be",
    ),
    "image tokens past max_seq_len": (
        asked([{"type": "text", "text": "word " * 40}, {"type": "image_url", "image_url": {"url": "red.png"}}]),
        r"train.jsonl:1: the example's image tokens end at token \d+, past data.max_seq_len=30",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_image_record_stops_naming_its_line_or_is_skipped_and_counted(case, processor, tmp_path):
    square("red").save(tmp_path / "red.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    record, message = BAD[case]
    path = write(tmp_path / "train.jsonl", [record, asked("<image>Colour?", images=["red.png"])])
    with pytest.raises(OnestopError, match=message):
        prepared(path, processor, "data.max_seq_len=30")
    skipped = prepared(path, processor, "data.max_seq_len=30", "data.on_error=skip")
    assert skipped.report.dropped == {case: 1} and skipped.report.train_records == 1


def test_a_cut_after_the_images_truncates_and_images_for_a_text_model_stop(processor, tmp_path):
    square("red").save(tmp_path / "red.png")
    first = asked("<image>Colour?", images=["red.png"])
    first["messages"] += [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "ok"}]
    path = write(tmp_path / "train.jsonl", [first])
    data = prepared(path, processor, "data.max_seq_len=30")
    assert data.report.truncated == 1 and len(data.train[0]["input_ids"]) == 30
    assert data.train[0]["input_ids"].count(image_token_id(processor)) == IMAGE_TOKENS
    text_model = load_processor(compose("model=tiny").model)
    with pytest.raises(OnestopError, match=r"train.jsonl:1: 1 image\(s\), but this model reads no images"):
        prepared(path, text_model, model="tiny")


def test_data_prepare_stops_in_one_line_on_a_missing_image(tmp_path):
    path = write(tmp_path / "train.jsonl", [asked("<image>Colour?", images=["gone.png"])])
    result = run_invoke("data.prepare", "model=tiny_vl", "data=messages", f"data.path={path}")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.jsonl:1: images[0]:" in lines[0] and "no such image file" in lines[0]


def test_sharegpt_reads_llama_factorys_images_too(processor, tmp_path):
    square("green").save(tmp_path / "green.png")
    record = {
        "conversations": [{"from": "human", "value": "<image>Colour?"}, {"from": "gpt", "value": "green"}],
        "images": ["green.png"],
    }
    path = write(tmp_path / "train.jsonl", [record])
    cfg = compose("model=tiny_vl", "data=sharegpt", f"data.path={path}", "data.val_ratio=0", "data.cache=false")
    data = prepare(cfg.data, processor, seed=0)
    assert (data.report.images, data.report.media_tokens) == (1, IMAGE_TOKENS)
    assert row_images(data.train[0]) == [str(tmp_path / "green.png")]
