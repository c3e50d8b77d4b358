"""A tiny generated dataset (coloured shapes with captions) so a training run can be shown and tested in
seconds on a CPU: ``make_tiny_dataset(folder)`` writes ``folder/images/*.png`` and ``folder/data.json``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
           "purple": (150, 50, 180), "orange": (240, 140, 30), "teal": (30, 160, 160), "pink": (240, 120, 180)}
SHAPES = ("circle", "square", "triangle", "stripes")


def make_tiny_dataset(folder: str | Path, n: int = 8, size: int = 64, seed: int = 0) -> tuple[Path, Path]:
    """Write ``n`` images (``size`` px tall, some wider, as real datasets are) and their captions;
    returns (data.json, images folder). Same bytes for the same arguments."""
    folder = Path(folder)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    entries = []
    for i in range(n):
        colour, shape = names[i % len(names)], SHAPES[(i // len(names) + i) % len(SHAPES)]
        width = size + (size // 4 if i % 3 == 0 else 0)
        bg = tuple(int(x) for x in rng.integers(0, 60, 3) + 190)
        img = Image.new("RGB", (width, size), bg)
        d = ImageDraw.Draw(img)
        c = COLOURS[colour]
        m = size // 6
        box = [m + int(rng.integers(0, m)), m, width - m - int(rng.integers(0, m)), size - m]
        if shape == "circle":
            d.ellipse(box, fill=c)
        elif shape == "square":
            d.rectangle(box, fill=c)
        elif shape == "triangle":
            d.polygon([(box[0], box[3]), ((box[0] + box[2]) // 2, box[1]), (box[2], box[3])], fill=c)
        else:
            for x in range(0, width, max(2, size // 8)):
                d.rectangle([x, 0, x + max(1, size // 16), size], fill=c)
        name = f"{i:03d}_{colour}_{shape}.png"
        img.save(images / name)
        entries.append({"image_file": name, "text": f"a {colour} {shape}"})
    data = folder / "data.json"
    data.write_text(json.dumps(entries, indent=1))
    return data, images
