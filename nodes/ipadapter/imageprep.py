"""Image-side helpers of ComfyUI_IPAdapter_plus: CLIP-vision prep, sharpening, negative noise, reference tiles.

Pure torch/PIL (no torchvision: its only wheel here is CUDA-linked). IMAGE is ``[B,H,W,C]`` float 0..1, MASK
``[B,H,W]``. The math of each function is in its docstring; tests check it directly.

PIL round trips follow torchvision's ToPILImage/ToTensor as the pack uses them: ``byte = floor(x·255)`` (a
truncation, not a rounding), back as ``byte / 255``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

INTERPOLATIONS = ("LANCZOS", "BICUBIC", "HAMMING", "BILINEAR", "BOX", "NEAREST")
CROP_POSITIONS = ("top", "bottom", "left", "right", "center", "pad")
NOISE_TYPES = ("fade", "dissolve", "gaussian", "shuffle")
TILE_SIZE = 256


def _pil(img_chw: torch.Tensor) -> Image.Image:
    arr = (img_chw.detach().float().cpu().clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr if arr.shape[-1] != 1 else arr[..., 0])


def _tensor(pil: Image.Image) -> torch.Tensor:
    arr = np.asarray(pil, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def pil_resize(images_bchw: torch.Tensor, size_wh: tuple[int, int], interpolation: str) -> torch.Tensor:
    """Resize each image through PIL (``Image.Resampling[interpolation]``), ``[B,C,H,W]`` in and out."""
    method = Image.Resampling[interpolation]
    return torch.stack([_tensor(_pil(img).resize(size_wh, resample=method)) for img in images_bchw])


def center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """torchvision CenterCrop on ``[..., H, W]``: top = round((H−h)/2), left = round((W−w)/2)."""
    H, W = x.shape[-2:]
    top, left = int(round((H - h) / 2.0)), int(round((W - w) / 2.0))
    return x[..., top:top + h, left:left + w]


def contrast_adaptive_sharpening(image_bchw: torch.Tensor, amount: float) -> torch.Tensor:
    """AMD FidelityFX CAS as the pack computes it, ``[B,C,H,W]`` 0..1.

    With the 3×3 neighbourhood a b c / d e f / g h i (zero padded): mn = min(b,d,e,f,h)∨0 + min(a,c,g,i)∨0,
    mx = max(b,d,e,f,h)∧1 + max(a,c,g,i)∧1, amp = sqrt(min(mn, 2−mx)/mx), w = −amp·(amount·(1/5−1/8)+1/8),
    out = ((b+d+f+h)·w + e)/(1+4w), NaN -> 0, clamped to 0..1.
    """
    img = F.pad(image_bchw.float(), (1, 1, 1, 1))
    a, b, c = img[..., :-2, :-2], img[..., :-2, 1:-1], img[..., :-2, 2:]
    d, e, f = img[..., 1:-1, :-2], img[..., 1:-1, 1:-1], img[..., 1:-1, 2:]
    g, h, i = img[..., 2:, :-2], img[..., 2:, 1:-1], img[..., 2:, 2:]
    cross, diag = torch.stack((b, d, e, f, h)), torch.stack((a, c, g, i))
    mn = cross.min(0)[0].clamp(min=0) + diag.min(0)[0].clamp(min=0)
    mx = cross.max(0)[0].clamp(max=1) + diag.max(0)[0].clamp(max=1)
    amp = torch.sqrt(torch.reciprocal(mx) * torch.minimum(mn, 2 - mx))
    w = -amp * (amount * (1 / 5 - 1 / 8) + 1 / 8)
    out = ((b + d + f + h) * w + e) * torch.reciprocal(1 + 4 * w)
    return torch.nan_to_num(out).clamp(0, 1)


def prep_image_for_clip_vision(image: torch.Tensor, interpolation: str = "LANCZOS", crop_position: str = "center",
                               sharpening: float = 0.0, size: int = 224) -> torch.Tensor:
    """PrepImageForClipVision: a square crop (or black padding) then a PIL resize to ``size``², then CAS.

    crop_position top/bottom/left/right/center keeps the min(H,W) square at that edge (centred on the other
    axis); ``pad`` adds black bars of (long−short)//2 on both sides of the short axis instead.
    """
    _, oh, ow, _ = image.shape
    x = image.permute(0, 3, 1, 2)
    if crop_position == "pad":
        if oh > ow:
            p = (oh - ow) // 2
            x = F.pad(x, (p, p, 0, 0))
        elif ow > oh:
            p = (ow - oh) // 2
            x = F.pad(x, (0, 0, p, p))
    else:
        side = min(oh, ow)
        left, top = (ow - side) // 2, (oh - side) // 2
        if crop_position == "top":
            top = 0
        elif crop_position == "bottom":
            top = oh - side
        elif crop_position == "left":
            left = 0
        elif crop_position == "right":
            left = ow - side
        x = x[:, :, top:top + side, left:left + side]
    x = pil_resize(x, (size, size), interpolation)
    if sharpening > 0:
        x = contrast_adaptive_sharpening(x, sharpening)
    return x.permute(0, 2, 3, 1)


def gaussian_blur(x_bchw: torch.Tensor, kernel: int, sigma: float | None = None) -> torch.Tensor:
    """torchvision's gaussian_blur: odd kernel k, σ = 0.3·((k−1)/2 − 1) + 0.8 unless given, reflect padding."""
    if sigma is None:
        sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    half = (kernel - 1) * 0.5
    xs = torch.linspace(-half, half, kernel)
    k1 = torch.exp(-0.5 * (xs / sigma) ** 2)
    k1 = k1 / k1.sum()
    c = x_bchw.shape[1]
    pad = kernel // 2
    y = F.pad(x_bchw, (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k1.view(1, 1, 1, -1).expand(c, 1, 1, kernel).to(y.dtype), groups=c)
    return F.conv2d(y, k1.view(1, 1, -1, 1).expand(c, 1, kernel, 1).to(y.dtype), groups=c)


def _elastic(x_bchw: torch.Tensor, alpha: float, sigma: float, g: torch.Generator) -> torch.Tensor:
    """torchvision ElasticTransform: displacement U(−1,1) per pixel and axis, blurred with σ (kernel
    ⌊8σ+1⌋ made odd) when σ>0, times α/size, applied with bilinear sampling (zeros outside)."""
    _, _, h, w = x_bchw.shape
    disp = torch.rand(1, 2, h, w, generator=g) * 2 - 1
    if sigma > 0:
        k = int(8 * sigma + 1)
        k += 1 - k % 2
        disp = gaussian_blur(disp, k, sigma)
    disp = disp * torch.tensor([alpha / w, alpha / h]).view(1, 2, 1, 1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    grid = torch.stack((xs, ys), -1)[None] + disp.permute(0, 2, 3, 1)
    return F.grid_sample(x_bchw, grid.expand(x_bchw.shape[0], -1, -1, -1), mode="bilinear",
                         padding_mode="zeros", align_corners=False)


def make_noise(noise_type: str, strength: float, blur: int, image: torch.Tensor | None = None) -> torch.Tensor:
    """IPAdapterNoise: a 224² negative image made of noise, optionally from ``image``.

    x = black 224² image, or ``image`` centre-cropped to a square and resized to 224² (bicubic, antialiased).
    A generator is seeded with ⌊Σx⌋ mod 1000000007 (same image, same noise; the global RNG is untouched),
    U = uniform noise, N = normal noise, s = strength:

    * fade: (1−s)·x + s·U
    * dissolve: M = [U₁ < s]; (1−M)·x + M·U₂
    * gaussian: x + s·N
    * shuffle: x' = vflip(hflip(elastic(x, α=75, σ=(1−s)·3.5))); n = 0.75·s·N; x'·(1−n) + n

    then clamped to 0..1 and, when blur > 0, Gaussian-blurred with kernel blur (made odd).
    """
    if image is None:
        x = torch.zeros(1, 3, 224, 224)
    else:
        x = image.permute(0, 3, 1, 2).float()
        side = min(x.shape[-2:])
        x = center_crop(x, side, side)
        x = F.interpolate(x, size=(224, 224), mode="bicubic", antialias=True, align_corners=False)
    g = torch.Generator().manual_seed(int(torch.sum(x).item()) % 1000000007)
    if noise_type == "fade":
        out = x * (1 - strength) + torch.rand(x.shape, generator=g) * strength
    elif noise_type == "dissolve":
        mask = (torch.rand(x.shape, generator=g) < strength).float()
        out = x * (1 - mask) + torch.rand(x.shape, generator=g) * mask
    elif noise_type == "gaussian":
        out = x + torch.randn(x.shape, generator=g) * strength
    elif noise_type == "shuffle":
        x = _elastic(x, 75.0, (1 - strength) * 3.5, g).flip(-2).flip(-1)
        n = torch.randn(x.shape, generator=g) * (strength * 0.75)
        out = x * (1 - n) + n
    else:
        raise ValueError(f"noise type must be one of {', '.join(NOISE_TYPES)}")
    out = out.clamp(0, 1)
    if blur > 0:
        out = gaussian_blur(out, blur + 1 - blur % 2)
    return out.permute(0, 2, 3, 1).contiguous()


def reference_tiles(image: torch.Tensor, mask: torch.Tensor | None, sharpening: float = 0.0):
    """IPAdapterTiled's tiles of a reference and the mask of each (in the resized reference's pixels).

    Near-square references (0.75 < H/W < 1.33) are centre-cropped to a square and resized to 512² (2×2 tiles
    of 256). Otherwise the short side becomes 256 and the long side keeps the aspect (at most 4 tiles: longer
    ones are centre-cropped to 256×1024). The resize is PIL Lanczos; the mask (default all ones) follows with
    bicubic. Tiles: ceil(side/256) per axis, starting at ⌊i·(256 − overlap)⌋ with
    overlap = (n·256 − side)/(n−1). Each tile's mask is zero except inside its rectangle, where it is the
    reference mask. Returns (tiles ``[n_tiles·B,256,256,C]`` in tile order, per-tile masks list, per-tile
    images list).
    """
    _, oh, ow, _ = image.shape
    if mask is None:
        mask = torch.ones(1, oh, ow, dtype=image.dtype)
    x = image.permute(0, 3, 1, 2)
    m = F.interpolate(mask[:, None].float(), size=(oh, ow), mode="bicubic", antialias=True, align_corners=False)
    if 0.75 < oh / ow < 1.33:
        side = min(oh, ow)
        x, m = center_crop(x, side, side), center_crop(m, side, side)
        resize = (TILE_SIZE * 2, TILE_SIZE * 2)
    else:
        resize = (int(TILE_SIZE * ow / oh), TILE_SIZE) if oh < ow else (TILE_SIZE, int(TILE_SIZE * oh / ow))
    x = pil_resize(x, resize, "LANCZOS")
    m = F.interpolate(m, size=resize[::-1], mode="bicubic", antialias=True, align_corners=False)
    if oh / ow > 4 or oh / ow < 0.25:
        ch, cw = (TILE_SIZE, TILE_SIZE * 4) if oh < ow else (TILE_SIZE * 4, TILE_SIZE)
        x, m = center_crop(x, ch, cw), center_crop(m, ch, cw)
    m = m[:, 0]
    if sharpening > 0:
        x = contrast_adaptive_sharpening(x, sharpening)
    x = x.permute(0, 2, 3, 1)
    _, h, w, _ = x.shape
    nx, ny = math.ceil(w / TILE_SIZE), math.ceil(h / TILE_SIZE)
    ox = max(0, (nx * TILE_SIZE - w) / (nx - 1 if nx > 1 else 1))
    oy = max(0, (ny * TILE_SIZE - h) / (ny - 1 if ny > 1 else 1))
    tiles, masks = [], []
    for iy in range(ny):
        for ix in range(nx):
            sx, sy = int(ix * (TILE_SIZE - ox)), int(iy * (TILE_SIZE - oy))
            tiles.append(x[:, sy:sy + TILE_SIZE, sx:sx + TILE_SIZE, :])
            tm = torch.zeros(m.shape[0], h, w, dtype=x.dtype)
            tm[:, sy:sy + TILE_SIZE, sx:sx + TILE_SIZE] = m[:, sy:sy + TILE_SIZE, sx:sx + TILE_SIZE]
            masks.append(tm)
    return tiles, masks


def split_tiles(image: torch.Tensor, k: int) -> torch.Tensor:
    """IMAGE ``[B,H,W,C]`` -> ``[B, k², H//k, W//k, C]`` row-major tiles (the ClipVision Enhancer's split)."""
    _, H, W, _ = image.shape
    h, w = H // k, W // k
    return torch.stack([torch.cat([x[None, i * h:(i + 1) * h, j * w:(j + 1) * w] for i in range(k)
                                   for j in range(k)]) for x in image])


def merge_hidden_states(x: torch.Tensor, k: int) -> torch.Tensor:
    """Tile hidden states ``[B·k², 1+P², W]`` -> ``[B, 1+P², W]``: the k×k patch grids are laid side by side
    into a (kP)² grid, adaptive-average-pooled back to P², and the mean CLS token is put in front."""
    out = []
    for e in x.split(k * k):
        p = int((e.shape[1] - 1) ** 0.5)
        cls = e[:, 0].mean(0, keepdim=True)[None]
        grid = e[:, 1:].reshape(k, k, p, p, e.shape[-1])
        merged = torch.cat([torch.cat([grid[i, j] for j in range(k)], 1) for i in range(k)], 0)[None]
        pooled = F.adaptive_avg_pool2d(merged.permute(0, 3, 1, 2), (p, p)).permute(0, 2, 3, 1)
        out.append(torch.cat([cls, pooled.reshape(1, p * p, e.shape[-1])], 1))
    return torch.cat(out)


def merge_image_embeds(x: torch.Tensor, k: int) -> torch.Tensor:
    """Tile image_embeds ``[B·k², E]`` -> ``[B, E]``: each E-vector is viewed as a √E×√E grid, the k×k grids are
    laid side by side and adaptive-average-pooled back (the pack's merge_embeddings). When E is not a square
    (ViT-bigG's 1280, the tiny encoders), where the pack fails, the tiles' embeds are averaged instead."""
    out = []
    for e in x.split(k * k):
        s = math.isqrt(e.shape[1])
        if s * s != e.shape[1]:
            out.append(e.mean(0, keepdim=True))
            continue
        grid = e.reshape(k, k, s, s)
        merged = torch.cat([torch.cat([grid[i, j] for j in range(k)], 1) for i in range(k)], 0)[None]
        out.append(F.adaptive_avg_pool2d(merged, (s, s)).flatten(1))
    return torch.cat(out)
