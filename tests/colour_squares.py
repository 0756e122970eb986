"""A small image question set made with Pillow, for the vision-language tests: a coloured square on a grey
background, asked about in several wordings, answered with the colour's name."""

import json
import random
from pathlib import Path

from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220)}
QUESTIONS = ["What colour is the square?", "Which colour is shown?", "Name the colour.", "Colour of the square?"]


def square(colour: str, size: int = 32, seed: int = 0) -> Image.Image:
    """A square of `colour` at a random place on grey, its shade varied a little."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), (128, 128, 128))
    side = rng.randint(size * 3 // 4, size - 2)
    left, top = rng.randint(0, size - side), rng.randint(0, size - side)
    shade = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    image.paste(shade, (left, top, left + side, top + side))
    return image


def write_colour_set(folder: Path, examples: int, seed: int = 0, layout: str = "parts") -> Path:
    """`examples` records in `folder`/train.jsonl, their images in `folder`/images; `layout`: `parts` (OpenAI
    content parts, relative image URLs) or `placeholders` (LLaMA-Factory's <image> and images list)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for index in range(examples):
        colour = list(COLOURS)[index % len(COLOURS)]
        name = f"images/{index:04d}.png"
        square(colour, seed=seed * 100_000 + index).save(folder / name)
        question = rng.choice(QUESTIONS)
        if layout == "parts":
            user = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": name}},
                                                {"type": "text", "text": question}]}  # fmt: skip
            record = {"messages": [user, {"role": "assistant", "content": colour}]}
        else:
            record = {"messages": [{"role": "user", "content": f"<image>{question}"},
                                   {"role": "assistant", "content": colour}], "images": [name]}  # fmt: skip
        lines.append(json.dumps(record))
    path = folder / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
