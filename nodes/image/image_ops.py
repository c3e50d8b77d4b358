"""Image operations for hints and inputs: CannyEdge, ImageScale, ImageCrop.

Canny is implemented here in torch (Gaussian blur, Sobel, non-maximum suppression, hysteresis) so that edge
hints need no OpenCV or kornia install. IMAGE is ``[B,H,W,C]`` float 0..1 throughout; every node returns a
new tensor.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

MAX_SIDE = 16384


class ImageOut(NodeOutputs):
    image: Any = Output("IMAGE")


def _check_image(image: Any, name: str = "image") -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty IMAGE batch [B,H,W,C], got "
                         f"{list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    return image


# --------------------------------------------------------------------------------------------------- canny
def _gaussian_kernel(size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def canny(image: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Canny edges of IMAGE ``[B,H,W,C]`` -> IMAGE ``[B,H,W,3]`` of 0/1.

    Thresholds apply to the gradient magnitude of the blurred grayscale image in [0, 1] with the unnormalised
    3x3 Sobel operator (a sharp black-to-white step gives about 1.6 after the blur), the same scale ComfyUI's
    kornia-based Canny node uses, so its 0.4 / 0.8 defaults behave alike.
    """
    x = image.float()
    if x.shape[-1] >= 3:
        gray = (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[:, None]
    else:
        gray = x[..., 0][:, None]
    blurred = F.conv2d(F.pad(gray, (2, 2, 2, 2), mode="replicate"), _gaussian_kernel())
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])[None, None]
    padded = F.pad(blurred, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, sobel_x)
    gy = F.conv2d(padded, sobel_x.transpose(-1, -2))
    magnitude = torch.sqrt(gx * gx + gy * gy + 1e-12)

    # Non-maximum suppression: keep a pixel only if it is the largest along its gradient direction
    # (quantised to 0, 45, 90, 135 degrees; image rows grow downwards like gy).
    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180.0
    sector = (torch.round(angle / 45.0) % 4).long()
    mp = F.pad(magnitude, (1, 1, 1, 1))
    h, w = magnitude.shape[-2:]

    def shifted(dy: int, dx: int) -> torch.Tensor:
        return mp[..., 1 + dy: 1 + dy + h, 1 + dx: 1 + dx + w]

    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for s, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        is_max = (magnitude >= shifted(dy, dx)) & (magnitude >= shifted(-dy, -dx))
        keep |= (sector == s) & is_max
    thin = torch.where(keep, magnitude, torch.zeros_like(magnitude))

    # Hysteresis: strong edges, plus weak ones connected to them through weak pixels (8-neighbourhood).
    strong, weak = thin >= high, thin >= low
    edges = strong
    for _ in range(h * w):
        grown = weak & (F.max_pool2d(edges.float(), 3, stride=1, padding=1) > 0)
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges.float()[:, 0, :, :, None].expand(-1, -1, -1, 3).contiguous()


class CannyIn(NodeInputs):
    image: Any = Socket("IMAGE")
    low_threshold: float = Field(0.4, ge=0.01, le=0.99, description="weak-edge gradient threshold")
    high_threshold: float = Field(0.8, ge=0.01, le=0.99, description="strong-edge gradient threshold")


def _canny_check(literals: dict, runtime):
    if literals.get("low_threshold", 0.4) > literals.get("high_threshold", 0.8):
        yield "low_threshold", "low_threshold must not be above high_threshold"


@node("CannyEdge", category="image/preprocessors", check=_canny_check, comfy_aliases={"Canny": {}})
def canny_edge(inp: CannyIn, ctx: NodeContext) -> ImageOut:
    """Canny edge map (white edges on black), the usual hint for a canny ControlNet."""
    return ImageOut(image=canny(_check_image(inp.image), inp.low_threshold, inp.high_threshold))


# ---------------------------------------------------------------------------------------- scale and crop
ScaleMethod = Literal["nearest-exact", "bilinear", "area", "bicubic"]


def center_crop_to_aspect(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop ``[B,C,H,W]`` around its centre to the aspect ratio width:height (ComfyUI's "center" crop)."""
    h, w = x.shape[-2:]
    if w * height > h * width:  # too wide
        new_w = max(1, round(h * width / height))
        left = (w - new_w) // 2
        return x[..., :, left:left + new_w]
    new_h = max(1, round(w * height / width))
    top = (h - new_h) // 2
    return x[..., top:top + new_h, :]


def scale_image(image: torch.Tensor, width: int, height: int, method: str = "bilinear",
                crop: str = "disabled") -> torch.Tensor:
    """Resize IMAGE ``[B,H,W,C]`` to width x height (0 keeps the aspect ratio from the other side)."""
    h, w = image.shape[1:3]
    if width == 0 and height == 0:
        return image.clone()
    width = width or max(1, round(w * height / h))
    height = height or max(1, round(h * width / w))
    x = image.permute(0, 3, 1, 2).float()
    if crop == "center":
        x = center_crop_to_aspect(x, width, height)
    if tuple(x.shape[-2:]) != (height, width):
        kwargs = {"align_corners": False, "antialias": True} if method in ("bilinear", "bicubic") else {}
        x = F.interpolate(x, size=(height, width), mode=method, **kwargs)
    return x.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


class ImageScaleIn(NodeInputs):
    image: Any = Socket("IMAGE")
    upscale_method: ScaleMethod = "bilinear"
    width: int = Field(512, ge=0, le=MAX_SIDE, description="target width (0 = keep the aspect ratio)")
    height: int = Field(512, ge=0, le=MAX_SIDE, description="target height (0 = keep the aspect ratio)")
    crop: Literal["disabled", "center"] = Field("disabled", description="center: crop to the target aspect first")


@node("ImageScale", category="image")
def image_scale(inp: ImageScaleIn, ctx: NodeContext) -> ImageOut:
    """Resize images (optionally centre-cropping to the target aspect ratio first, so nothing is stretched)."""
    image = _check_image(inp.image)
    return ImageOut(image=scale_image(image, inp.width, inp.height, inp.upscale_method, inp.crop))


class ImageCropIn(NodeInputs):
    image: Any = Socket("IMAGE")
    width: int = Field(512, ge=1, le=MAX_SIDE)
    height: int = Field(512, ge=1, le=MAX_SIDE)
    x: int = Field(0, ge=0, le=MAX_SIDE, description="left edge")
    y: int = Field(0, ge=0, le=MAX_SIDE, description="top edge")


@node("ImageCrop", category="image")
def image_crop(inp: ImageCropIn, ctx: NodeContext) -> ImageOut:
    """Cut a width x height window at (x, y); a window reaching past the border is clipped to the image."""
    image = _check_image(inp.image)
    h, w = image.shape[1:3]
    if inp.x >= w or inp.y >= h:
        raise ValueError(f"x/y: the crop origin ({inp.x}, {inp.y}) is outside the {w}x{h} image")
    return ImageOut(image=image[:, inp.y:min(h, inp.y + inp.height), inp.x:min(w, inp.x + inp.width)].clone())
