"""The loss log (JSON lines, one object per optimizer step) and the loss plot (PNG drawn with PIL).

Why PIL: it is already a dependency; a line plot with axes and a moving average needs no plotting library.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


class LossLog:
    """Appends ``{"step", "loss", "seconds"}`` lines; a resumed run keeps the earlier lines up to its step."""

    def __init__(self, path: Path, resume_step: int = 0) -> None:
        self.path = Path(path)
        kept = []
        if resume_step and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= resume_step:
                        kept.append(line)
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(k + "\n" for k in kept))

    def write(self, step: int, loss: float, seconds: float) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "loss": loss, "seconds": round(seconds, 4)}) + "\n")


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_losses(losses: list[float], dest: Path, title: str = "training loss", size=(800, 450)) -> Path:
    """Loss per step (light) and its moving average (dark) against the step, with labelled axes."""
    w, h = size
    left, right, top, bottom = 70, 20, 40, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((left, 12), title, fill="black", font=font)
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    if losses:
        lo, hi = min(losses), max(losses)
        hi = hi if hi > lo else lo + 1e-8
        n = len(losses)

        def xy(i: int, v: float) -> tuple[float, float]:
            x = left + (w - left - right) * (i / max(n - 1, 1))
            y = (h - bottom) - (h - top - bottom) * ((v - lo) / (hi - lo))
            return x, y

        for frac in (0.0, 0.5, 1.0):
            v = lo + (hi - lo) * frac
            y = xy(0, v)[1]
            d.line([left - 4, y, left, y], fill="black")
            d.text((4, y - 6), f"{v:.4g}", fill="black", font=font)
        for i in sorted({0, n // 2, n - 1}):
            x = xy(i, lo)[0]
            d.line([x, h - bottom, x, h - bottom + 4], fill="black")
            d.text((x - 8, h - bottom + 8), str(i + 1), fill="black", font=font)
        d.text(((w - left) // 2, h - 20), "step", fill="black", font=font)
        if n > 1:
            d.line([xy(i, v) for i, v in enumerate(losses)], fill=(150, 180, 230), width=1)
            avg = moving_average(losses, max(1, n // 20))
            d.line([xy(i, v) for i, v in enumerate(avg)], fill=(20, 60, 160), width=2)
        else:
            x, y = xy(0, losses[0])
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(20, 60, 160))
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    img.save(dest)
    return dest
