"""Writes the demo inputs of the ControlNet and inpainting graphs (deterministic: same bytes every run).

    /work/venv/bin/python graphs/assets/make_controlnet_inpaint_assets.py

scene.png           128x128 RGB: sky, ground, sun, a house and a tree (clear edges for CannyEdge).
inpaint_scene.png   64x64 RGBA: the scene at the tiny models' size; alpha 0 over the region to repaint, so
                    LoadImage's mask output (1 - alpha) is the inpainting mask, as in ComfyUI.
"""

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent


def scene(size: int = 128) -> Image.Image:
    s = size / 128
    image = Image.new("RGB", (size, size), (135, 190, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, int(88 * s), size, size], fill=(70, 150, 60))  # ground
    draw.ellipse([int(96 * s), int(10 * s), int(118 * s), int(32 * s)], fill=(250, 220, 60))  # sun
    draw.rectangle([int(18 * s), int(56 * s), int(58 * s), int(92 * s)], fill=(200, 80, 60))  # house
    draw.polygon([(int(14 * s), int(58 * s)), (int(38 * s), int(36 * s)), (int(62 * s), int(58 * s))],
                 fill=(120, 60, 40))  # roof
    draw.rectangle([int(32 * s), int(72 * s), int(44 * s), int(92 * s)], fill=(90, 50, 30))  # door
    draw.rectangle([int(86 * s), int(60 * s), int(92 * s), int(92 * s)], fill=(100, 70, 40))  # trunk
    draw.ellipse([int(74 * s), int(38 * s), int(104 * s), int(68 * s)], fill=(40, 120, 50))  # crown
    return image


def inpaint_scene(size: int = 64) -> Image.Image:
    """The scene with a transparent hole on the grass right of the house (where the gummy bear goes)."""
    image = scene(size).convert("RGBA")
    alpha = Image.new("L", (size, size), 255)
    ImageDraw.Draw(alpha).ellipse([int(size * 0.5), int(size * 0.45), int(size * 0.8), int(size * 0.9)], fill=0)
    image.putalpha(alpha)
    return image


if __name__ == "__main__":
    scene().save(HERE / "scene.png", optimize=False)
    inpaint_scene().save(HERE / "inpaint_scene.png", optimize=False)
    print("wrote scene.png, inpaint_scene.png")
