"""Training data: a JSON list of ``{"image_file", "text"}`` under an images folder, preprocessed as the
reference scripts (tencent-ailab/IP-Adapter ``tutorial_train*.py``) do.

Preprocessing, per image (facts of the reference recipe):

* UNet input: shortest side resized to ``resolution`` (PIL bilinear, torchvision's size rule: the long side
  becomes ``int(resolution * long / short)``), then a square crop of ``resolution``, then ``x / 255 * 2 - 1``.
  SD1.5 crops the centre with torchvision's ``CenterCrop`` rounding (``round((h - s) / 2)``); SDXL crops at
  ``(h - s) // 2`` (or at random with ``center_crop=False``) and records the crop for its conditioning.
* Encoder input: ``CLIPImageProcessor`` (shortest side to the encoder size, bicubic, centre crop, CLIP
  mean/std) at the encoder's own image size.
* SDXL size/crop conditioning: ``original_size`` (h, w of the file), ``crop_coords_top_left`` (top, left),
  ``target_size`` (resolution, resolution), concatenated into the six ``add_time_ids``.

Random drops for classifier-free guidance (one uniform draw ``r`` per item): ``r < i`` drops the image
embedding, ``r < i + t`` blanks the text, ``r < i + t + ti`` does both (0.05 each by default).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import TrainingError

DROP_RATES = (0.05, 0.05, 0.05)  # image, text, both
_SHOWN = 20  # missing files listed in an error before "and N more"


@dataclass(frozen=True)
class Record:
    """One training example: the image file (inside the images folder) and its caption."""

    image_file: str
    text: str
    path: Path


def read_records(data_file: str | Path, images_dir: str | Path) -> list[Record]:
    """Read and check the data file; every problem is a sentence naming the file and the entry."""
    data_file, images_dir = Path(data_file), Path(images_dir)
    if not data_file.is_file():
        raise TrainingError(f"the data file {data_file} does not exist.")
    if not images_dir.is_dir():
        raise TrainingError(f"the images folder {images_dir} does not exist.")
    try:
        doc = json.loads(data_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrainingError(f"{data_file.name} is not valid JSON ({exc}).") from None
    expected = 'a JSON list of {"image_file": "1.png", "text": "a dog"} objects'
    if not isinstance(doc, list) or not doc:
        raise TrainingError(f"{data_file.name} must hold {expected}, but it holds "
                            f"{'an empty list' if doc == [] else type(doc).__name__}.")
    bad = [i for i, d in enumerate(doc) if not (isinstance(d, dict) and isinstance(d.get("image_file"), str)
                                                and isinstance(d.get("text"), str) and d["image_file"])]
    if bad:
        raise TrainingError(f"{data_file.name} must hold {expected}; entries {_listing([str(i) for i in bad])} "
                            "are not (each needs a non-empty string image_file and a string text).")
    root = images_dir.resolve()
    records, missing, outside = [], [], []
    for d in doc:
        path = (root / d["image_file"]).resolve()
        if root not in path.parents:
            outside.append(d["image_file"])
        elif not path.is_file():
            missing.append(d["image_file"])
        records.append(Record(d["image_file"], d["text"], path))
    if outside:
        raise TrainingError(f"{len(outside)} image file(s) in {data_file.name} point outside {images_dir}: "
                            f"{_listing(outside)}.")
    if missing:
        raise TrainingError(f"{len(missing)} of {len(doc)} image files listed in {data_file.name} are missing "
                            f"from {images_dir}: {_listing(missing)}.")
    return records


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as exc:
        raise TrainingError(f"{path.name} is not a readable image ({exc}).") from None


def unet_pixels(image: Image.Image, size: int, arch: str, center_crop: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """PIL image -> (pixels ``[3,size,size]`` in -1..1, original (h, w), crop top-left (top, left))."""
    w, h = image.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    resized = image.resize((nw, nh), Image.BILINEAR)
    if arch == "sdxl" and not center_crop:
        top = int(torch.randint(0, nh - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, nw - size + 1, (1,), generator=generator))
    elif arch == "sdxl":
        top, left = (nh - size) // 2, (nw - size) // 2
    else:
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    crop = resized.crop((left, top, left + size, top + size))
    arr = np.asarray(crop, dtype=np.float32) / 255.0
    pixels = torch.from_numpy(arr.transpose(2, 0, 1).copy()) * 2.0 - 1.0
    return pixels, (h, w), (top, left)


def clip_processor(image_size: int):
    """``CLIPImageProcessor`` at the encoder's size (the reference uses the defaults, i.e. 224)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size,
                                                                              "width": image_size})


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Token ids ``[1, 77]`` padded to the tokenizer's maximum length, as the reference does."""
    return tokenizer(text, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                     return_tensors="pt").input_ids


def draw_drops(n: int, generator: torch.Generator, rates=DROP_RATES) -> tuple[list[bool], list[bool]]:
    """(drop image, blank text) per item from one uniform draw each (see the module docstring)."""
    i, t, ti = rates
    r = torch.rand(n, generator=generator).tolist()
    drop_image = [x < i or i + t <= x < i + t + ti for x in r]
    blank_text = [i <= x < i + t + ti for x in r]
    return drop_image, blank_text
