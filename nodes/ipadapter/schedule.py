"""Per-frame IP-Adapter weights (IPAdapterWeights and friends): one weight per latent, for IPAdapterBatch.

``weights_schedule`` reproduces ComfyUI_IPAdapter_plus's IPAdapterWeights:

* ``weights`` is a comma/newline separated list of floats. With ``timing = custom`` it is used as is.
* Otherwise only its first (start, default 0) and last (end, default 1) values count and ``frames`` (at least
  2) values are made: ``start_frame`` copies of start, then for i in 0..d−1 (d = min(end_frame, frames) −
  start_frame, n = d − 1) ``start + (end − start)·f(i/n)`` with f = linear: x; ease_in_out: (1 − cos πx)/2;
  ease_in: sin(πx/2); ease_out: 1 − cos(πx/2); random: U(start, end) from a generator seeded with 0 (the pack
  uses the unseeded global RNG; ipgraph is reproducible); the last of them is set to end (except random), then
  copies of end up to ``frames``.
* With an image batch of k images: ``full batch`` repeats the schedule per image (image_1 = each image
  repeated len(schedule) times); ``shift batches`` cross-fades consecutive pairs (image_1 = images[:-1],
  image_2 = images[1:], each repeated, the schedule repeated k−1 times); ``alternate batches`` alternates the
  schedule and its inverse within the weights' range (max − (w − min)) over pairs of images.
* ``add_starting_frames`` / ``add_ending_frames`` prepend/append copies of the first/last weight (and of the
  first/last image).
* ``weights_invert`` is the list reversed; ``total_frames`` its length.
"""

from __future__ import annotations

import math
import random

import torch

TIMINGS = ("custom", "linear", "ease_in_out", "ease_in", "ease_out", "random")
METHODS = ("full batch", "shift batches", "alternate batches")


def parse_weights(text: str) -> list[float]:
    try:
        return [float(w) for w in text.replace("\n", ",").split(",") if w.strip() != ""]
    except ValueError:
        raise ValueError(f"weights must be numbers separated by commas or new lines, not {text!r}") from None


def base_schedule(weights: str, timing: str, frames: int, start_frame: int, end_frame: int) -> list[float]:
    values = parse_weights(weights)
    if timing == "custom":
        return values or [0.0]
    frames = max(frames, 2)
    start, end = (values[0], values[-1]) if values else (0.0, 1.0)
    out = [start] * start_frame if start_frame > 0 else []
    end_frame = min(end_frame, frames)
    d = end_frame - start_frame
    rng = random.Random(0)
    for i in range(d):
        x = i / (d - 1) if d > 1 else 0.0
        if timing == "linear":
            out.append(start + (end - start) * x)
        elif timing == "ease_in_out":
            out.append(start + (end - start) * (1 - math.cos(x * math.pi)) / 2)
        elif timing == "ease_in":
            out.append(start + (end - start) * math.sin(x * math.pi / 2))
        elif timing == "ease_out":
            out.append(start + (end - start) * (1 - math.cos(x * math.pi / 2)))
        elif timing == "random":
            out.append(rng.uniform(start, end))
    if out and timing != "random":
        out[-1] = end
    if end_frame < frames:
        out.extend([end] * (frames - end_frame))
    return out or [0.0]


def weights_schedule(strategy: dict, image: torch.Tensor | None = None):
    """(weights, weights_invert, total_frames, image_1, image_2) for a weights strategy dict."""
    weights = base_schedule(strategy["weights"], strategy["timing"], strategy["frames"], strategy["start_frame"],
                            strategy["end_frame"])
    frames = len(weights)
    image_1 = image_2 = None
    lo, hi = min(weights), max(weights)
    if image is not None:
        method = strategy["method"]
        if "shift" in method:
            image_1, image_2 = image[:-1], image[1:]
            weights = weights * image_1.shape[0]
            image_1, image_2 = image_1.repeat_interleave(frames, 0), image_2.repeat_interleave(frames, 0)
        elif "alternate" in method:
            image_1 = image[::2].repeat_interleave(2, 0)[1:]
            image_2 = image[1::2].repeat_interleave(2, 0)
            new = (weights + [hi - (w - lo) for w in weights]) * (image_1.shape[0] // 2)
            if image.shape[0] % 2:
                image_1 = image_1[:-1]
            else:
                image_2 = image_2[:-1]
                new = new + weights
            weights = new
            image_1, image_2 = image_1.repeat_interleave(frames, 0), image_2.repeat_interleave(frames, 0)
        else:
            weights = weights * image.shape[0]
            image_1 = image.repeat_interleave(frames, 0)
        start, end = strategy["add_starting_frames"], strategy["add_ending_frames"]
        if start > 0:
            weights = [weights[0]] * start + weights
            image_1 = torch.cat([image[:1].repeat(start, 1, 1, 1), image_1])
            if image_2 is not None:
                image_2 = torch.cat([image[:1].repeat(start, 1, 1, 1), image_2])
        if end > 0:
            weights = weights + [weights[-1]] * end
            image_1 = torch.cat([image_1, image[-1:].repeat(end, 1, 1, 1)])
            if image_2 is not None:
                image_2 = torch.cat([image_2, image[-1:].repeat(end, 1, 1, 1)])
    return weights, weights[::-1], len(weights), image_1, image_2


def prompt_schedule(strategy: dict, prompt: str) -> str:
    """IPAdapterPromptScheduleFromWeightsStrategy: one ``"frame": "prompt",`` line per image of the strategy
    (prompts repeated/truncated to ``frame_count``), frame = i·frames + add_starting_frames."""
    frames, start, end = strategy["frames"], strategy["add_starting_frames"], strategy["add_ending_frames"]
    count = strategy["frame_count"]
    lines = [p for p in prompt.split("\n") if p.strip() != ""]
    out = ""
    if lines and count > 0:
        lines = lines[:count] + [lines[-1]] * max(0, count - len(lines))
        if start > 0:
            out += f'"0": "{lines[0]}",\n'
        for i in range(count):
            out += f'"{i * frames + start}": "{lines[i]}",\n'
        if end > 0:
            out += f'"{count * frames + start}": "{lines[-1]}",\n'
    return out
