"""Image operations for hints and inputs: CannyEdge (ipgraph), and ComfyUI's ImageScale, ImageCrop and Canny.

Canny is implemented here in torch (Gaussian blur, Sobel, non-maximum suppression, hysteresis) so that edge
hints need no OpenCV or kornia install. IMAGE is ``[B,H,W,C]`` float 0..1 throughout; every node returns a
new tensor.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

MAX_SIDE = 16384


class ImageOut(NodeOutputs):
    IMAGE: Any = Output("IMAGE")


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


class CannyEdgeOut(NodeOutputs):
    image: Any = Output("IMAGE")


@node("CannyEdge", category="image/preprocessors", check=_canny_check)
def canny_edge(inp: CannyIn, ctx: NodeContext) -> CannyEdgeOut:
    """Canny edge map (white edges on black), the usual hint for a canny ControlNet."""
    return CannyEdgeOut(image=canny(_check_image(inp.image), inp.low_threshold, inp.high_threshold))


@node("Canny", category="image/preprocessors", check=_canny_check)
def canny_comfy(inp: CannyIn, ctx: NodeContext) -> ImageOut:
    """ComfyUI's Canny (comfy_extras/nodes_canny.py): the same edge map as CannyEdge, output named IMAGE."""
    return ImageOut(IMAGE=canny(_check_image(inp.image), inp.low_threshold, inp.high_threshold))


# ---------------------------------------------------------------------------------------- scale and crop
ScaleMethod = Literal["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]


def center_crop_to_aspect(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop ``[..., H, W]`` around its centre to the aspect ratio width:height (ComfyUI's "center" crop:
    ``round`` of half the excess on each side, as comfy.utils.common_upscale)."""
    old_h, old_w = x.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    left = top = 0
    if old_aspect > new_aspect:
        left = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        top = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return x[..., top:old_h - top, left:old_w - left]


def _lanczos(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """PIL's Lanczos on 8-bit images, as ComfyUI's comfy.utils.lanczos (so the result is quantised to 1/255)."""
    from PIL import Image

    out = []
    for frame in x:
        array = (frame.movedim(0, -1).float().cpu().numpy() * 255.0).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        resized = np.asarray(image.resize((width, height), resample=Image.Resampling.LANCZOS), dtype=np.float32)
        resized = resized[..., None] if resized.ndim == 2 else resized
        out.append(torch.from_numpy(resized / 255.0).movedim(-1, 0))
    return torch.stack(out).to(device=x.device, dtype=x.dtype)


def common_upscale(x: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """ComfyUI's comfy.utils.common_upscale on ``[B,C,H,W]``: optional centre crop to the target aspect, then
    ``F.interpolate(mode=method)`` (no antialiasing, align_corners default) or PIL Lanczos. Images and latents."""
    if crop == "center":
        x = center_crop_to_aspect(x, width, height)
    if method == "lanczos":
        return _lanczos(x, width, height)
    if method == "bislerp":
        return bislerp(x, width, height)
    return F.interpolate(x, size=(height, width), mode=method)


def bislerp(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """ComfyUI's ``bislerp`` latent resize: bilinear sampling positions, but neighbouring channel vectors are
    joined by spherical interpolation instead of a straight line (width first, then height).

    Between the vectors ``a`` and ``b`` at ratio ``r``: ``slerp(â, b̂, r) * (|a|(1-r) + |b|r)`` with ``â = a/|a|``
    (0 for a zero vector); ``a`` itself where the directions agree (dot > 1-1e-5), the straight line where they
    are opposite (dot < -1+1e-5). Positions are those of ``F.interpolate(mode="bilinear")`` on the index ramp:
    ``floor(p)`` and its right neighbour (the last index repeats), ratio ``p - floor(p)``. Computed in fp32.
    """
    dtype = x.dtype
    out = _slerp_resize(_slerp_resize(x.float(), width, dim=3), height, dim=2)
    return out.to(dtype)


def _slerp_resize(x: torch.Tensor, new_len: int, dim: int) -> torch.Tensor:
    old_len = x.shape[dim]
    ramp = torch.arange(old_len, dtype=torch.float32, device=x.device).reshape(1, 1, 1, -1)
    pos = F.interpolate(ramp, size=(1, new_len), mode="bilinear").flatten()
    nxt = ramp + 1
    nxt[..., -1] -= 1
    right = F.interpolate(nxt, size=(1, new_len), mode="bilinear").flatten().to(torch.int64)
    ratio, left = pos - pos.floor(), pos.to(torch.int64)
    a = x.index_select(dim, left).movedim(1, -1)  # channel vectors last
    b = x.index_select(dim, right).movedim(1, -1)
    shape = [1] * a.ndim
    shape[dim - 1] = new_len  # the resized axis, once channels moved last
    r = ratio.reshape(shape)
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua = torch.where(na == 0, torch.zeros_like(a), a / na)
    ub = torch.where(nb == 0, torch.zeros_like(b), b / nb)
    dot = (ua * ub).sum(-1, keepdim=True)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    out = (torch.sin((1 - r) * omega) / so * ua + torch.sin(r * omega) / so * ub) * (na * (1 - r) + nb * r)
    out = torch.where(dot > 1 - 1e-5, a, out)
    out = torch.where(dot < 1e-5 - 1, a * (1 - r) + b * r, out)
    return out.movedim(-1, 1).contiguous()


def scale_image(image: torch.Tensor, width: int, height: int, method: str = "nearest-exact",
                crop: str = "disabled") -> torch.Tensor:
    """Resize IMAGE ``[B,H,W,C]`` to width x height (0 keeps the aspect ratio from the other side), ComfyUI's
    ImageScale: both 0 returns the image unchanged."""
    h, w = image.shape[1:3]
    if width == 0 and height == 0:
        return image
    width = width or max(1, round(w * height / h))
    height = height or max(1, round(h * width / w))
    x = common_upscale(image.movedim(-1, 1).float(), width, height, method, crop)
    return x.movedim(1, -1).contiguous()


class ImageScaleIn(NodeInputs):
    image: Any = Socket("IMAGE")
    upscale_method: ScaleMethod = "nearest-exact"
    width: int = Field(512, ge=0, le=MAX_SIDE, description="target width (0 = keep the aspect ratio)")
    height: int = Field(512, ge=0, le=MAX_SIDE, description="target height (0 = keep the aspect ratio)")
    crop: Literal["disabled", "center"] = Field("disabled", description="center: crop to the target aspect first")


OLD_IMAGE = {"image": "IMAGE"}  # ipgraph/1 documents named the output in lower case


@node("ImageScale", category="image/upscaling", display_name="Upscale Image", renamed_outputs=OLD_IMAGE)
def image_scale(inp: ImageScaleIn, ctx: NodeContext) -> ImageOut:
    """Resize images (optionally centre-cropping to the target aspect ratio first, so nothing is stretched)."""
    image = _check_image(inp.image)
    return ImageOut(IMAGE=scale_image(image, inp.width, inp.height, inp.upscale_method, inp.crop))


class ImageCropIn(NodeInputs):
    image: Any = Socket("IMAGE")
    width: int = Field(512, ge=1, le=MAX_SIDE)
    height: int = Field(512, ge=1, le=MAX_SIDE)
    x: int = Field(0, ge=0, le=MAX_SIDE, description="left edge")
    y: int = Field(0, ge=0, le=MAX_SIDE, description="top edge")


@node("ImageCrop", category="image/transform", display_name="Crop Image", renamed_outputs=OLD_IMAGE)
def image_crop(inp: ImageCropIn, ctx: NodeContext) -> ImageOut:
    """Cut a width x height window at (x, y), as ComfyUI: an origin past the border moves to the last pixel,
    a window reaching past the border is clipped to the image."""
    image = _check_image(inp.image)
    h, w = image.shape[1:3]
    x, y = min(inp.x, w - 1), min(inp.y, h - 1)
    return ImageOut(IMAGE=image[:, y:y + inp.height, x:x + inp.width].clone())
