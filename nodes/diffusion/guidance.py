"""The guided model call: every conditioning entry evaluated and blended, then classifier-free guidance.

This is ComfyUI's ``calc_cond_batch`` + CFG, in the model's output space (eps or v). For one side (positive
or negative) with entries ``e``, at a step with noise level ``sigma`` and latent ``x`` ``[B,C,H,W]``:

- an entry acts iff ``sigma_end <= sigma <= sigma_start``, where ``sigma_start = percent_to_sigma(start)``
  and ``sigma_end = percent_to_sigma(end)`` (ComfyUI's map; start 0 / end 1 always pass);
- it is evaluated on its area ``A = (h, w, y, x)`` of the latent (default: all of it; percentages are
  rounded to latent pixels; with ``set_area_to_bounds`` the mask's bounding box, at least 8x8):
  ``o_e = UNet(x[A], t, embeds_e, controls_e)``;
- its weight ``m_e`` over ``A`` is ``mask_e[A] * mask_strength_e * strength_e`` (mask resized bilinearly to
  the latent), or without a mask ``strength_e`` feathered linearly over 8 latent pixels at every area edge
  that is not an image edge (weights 1/8, 2/8, ..., 1 from the edge inwards);
- the side's output is ``sum_e m_e * o_e / (1e-37 + sum_e m_e)``, each term placed at its area;
- ``out = uncond + cfg * (cond - uncond)``; with ``cfg == 1`` the negative side is not evaluated.

As in ComfyUI, each positive entry with an area gets a negative twin over the same area (the negative entry
whose area is the smallest that encloses it, with the positive entry's area/strength/mask/range/controls).

Blending in output space equals ComfyUI's blending of x0 predictions wherever some entry covers a pixel
(x0 is affine in the output for a fixed x); where none does, ComfyUI's x0 is 0 and ipgraph's output is 0.

When each side is one entry acting everywhere (what a plain CLIPTextEncode gives), both sides run as one
UNet batch ``[negative..., positive...]`` exactly as diffusers' pipelines (and ControlNet, IP-Adapter) do.
Text of different token counts (long prompts are 77*k tokens) is batched as ComfyUI's ``CONDCrossAttn``
does: each side's embeddings are repeated along the tokens to the least common multiple ``L`` of the counts
(``[e, e, ...]``; repeating every key/value ``L/T`` times leaves cross-attention's softmax average unchanged),
unless ``L / min(T) > 4``, in which case the sides run as separate UNet calls (the general path below).
Otherwise each entry is one UNet call of the batch's B images (``state.uncond_only`` tells IP-Adapter which
side it is); ControlNets then see the entry's crop (their hint resized to it, as ComfyUI).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core.types import SDXL, CondEntry, Conditioning, ModelHandle, SamplingState
from .samplers import ModelSampling

FEATHER = 8  # latent pixels of linear fade at an area's inner edges


def unet_call(unet, x, t, embeds, added, down, mid) -> torch.Tensor:
    """The one place the UNet is called while sampling (patch installers may wrap ``unet.forward``)."""
    return unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added, down_block_additional_residuals=down,
                mid_block_additional_residual=mid, return_dict=False)[0]


def time_ids(entry: CondEntry, height: int, width: int) -> torch.Tensor:
    """SDXL size conditioning: (original h, w, crop top, left, target h, w); zeros mean the image size."""
    default = [height, width, 0, 0, height, width]
    if entry.add_time_ids is None:
        return torch.tensor([default], dtype=torch.float32)
    values = entry.add_time_ids[0].tolist()
    for i in (0, 1, 4, 5):
        values[i] = values[i] or default[i]
    return torch.tensor([values], dtype=torch.float32)


def resolve_area(entry: CondEntry, h: int, w: int) -> tuple[tuple[int, int, int, int] | None, torch.Tensor | None]:
    """(area in latent pixels or None, mask [b,h,w] at latent size or None), as ComfyUI's
    ``resolve_areas_and_cond_masks``."""
    area = entry.area
    if area is not None and area[0] == "percentage":
        area = (max(1, round(area[1] * h)), max(1, round(area[2] * w)), round(area[3] * h), round(area[4] * w))
    mask = None
    if entry.mask is not None:
        mask = entry.mask.float()
        mask = mask[None] if mask.ndim == 2 else mask
        if tuple(mask.shape[-2:]) != (h, w):
            mask = F.interpolate(mask[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        if entry.set_area_to_bounds:
            bounds = mask.abs().max(dim=0).values
            ys, xs = torch.nonzero(bounds, as_tuple=True)
            if len(ys) == 0:
                area = (8, 8, 0, 0)
            else:
                y0, x0 = int(ys.min()), int(xs.min())
                area = (max(8, int(ys.max()) - y0 + 1), max(8, int(xs.max()) - x0 + 1), y0, x0)
    if area is not None:
        ah, aw, ay, ax = (int(v) for v in area)
        ay, ax = min(ay, h - 1), min(ax, w - 1)
        area = (max(1, min(ah, h - ay)), max(1, min(aw, w - ax)), ay, ax)
    return area, mask


def weight(entry: CondEntry, area, mask, b: int, c: int, h: int, w: int) -> torch.Tensor:
    """The entry's blending weight over its area, ``[B, C, ah, aw]`` (see the module docstring)."""
    ah, aw, ay, ax = area if area is not None else (h, w, 0, 0)
    if mask is not None:
        m = mask[:, ay:ay + ah, ax:ax + aw] * entry.mask_strength
        if b % m.shape[0]:
            raise ValueError(f"the conditioning mask has {m.shape[0]} images but the latent batch has {b}")
        mult = m[:, None].repeat(b // m.shape[0], c, 1, 1) * entry.strength
        return mult
    mult = torch.full((b, c, ah, aw), float(entry.strength))
    if area is not None:
        for t in range(FEATHER):
            f = (t + 1) / FEATHER
            if ay != 0:
                mult[:, :, t:t + 1, :] *= f
            if ah + ay < h:
                mult[:, :, ah - 1 - t:ah - t, :] *= f
            if ax != 0:
                mult[:, :, :, t:t + 1] *= f
            if aw + ax < w:
                mult[:, :, :, aw - 1 - t:aw - t] *= f
    return mult


def _encloses(outer, inner) -> bool:
    return (inner[2] >= outer[2] and inner[3] >= outer[3] and outer[0] + outer[2] >= inner[0] + inner[2]
            and outer[1] + outer[3] >= inner[1] + inner[3])


def batch_tokens(lengths: list[int]) -> int | None:
    """The token count text of these lengths is batched at (ComfyUI's ``CONDCrossAttn.can_concat/concat``):
    their least common multiple, or None where it is more than 4 times the shortest (run them apart)."""
    tokens = math.lcm(*lengths)
    return None if tokens // min(lengths) > 4 else tokens


def _repeat_tokens(embeds: torch.Tensor, tokens: int) -> torch.Tensor:
    t = embeds.shape[1]
    return embeds if t == tokens else embeds.repeat(1, tokens // t, 1)


class _Prepared:
    def __init__(self, entry: CondEntry, area, mask, sigma_start: float, sigma_end: float):
        self.entry, self.area, self.mask = entry, area, mask
        self.sigma_start, self.sigma_end = sigma_start, sigma_end
        self.mult = None

    def acts(self, sigma: float) -> bool:
        return not (sigma > self.sigma_start or sigma < self.sigma_end)


class Guidance:
    """``guidance(model_input, t, sigma) -> guided model output`` for one sampling call.

    ``negative`` None means no negative side (BasicGuider: the positive output alone)."""

    def __init__(self, model: ModelHandle, positive: Conditioning, negative: Conditioning | None, cfg: float,
                 latent_shape: tuple, ms: ModelSampling, state: SamplingState, device, dtype,
                 concat: torch.Tensor | None = None):
        self.model, self.cfg, self.state = model, float(cfg), state
        self.device, self.dtype = device, dtype
        self.do_cfg = negative is not None and not math.isclose(self.cfg, 1.0)
        b, c, h, w = latent_shape
        self.shape = (b, c, h, w)
        self.concat = None if concat is None else concat.to(device=device, dtype=dtype)
        self.positive, self.negative = positive, negative if self.do_cfg else None
        self.simple = all(len(cond.entries) == 1 and cond.entries[0].is_plain
                          for cond in (positive, self.negative) if cond is not None)
        if self.simple and self.do_cfg:
            self.simple = batch_tokens([positive.embeds.shape[1], self.negative.embeds.shape[1]]) is not None
        state.do_cfg, state.batch_size, state.latent_hw = self.do_cfg, b, (h, w)
        if self.simple:
            self._prepare_simple()
        else:
            self.sides = [(False, self._prepare(positive, ms))]
            if self.do_cfg:
                neg = self._prepare(self.negative, ms)
                self._add_area_twins(self.sides[0][1], neg)
                self.sides.insert(0, (True, neg))
            self._extras: dict = {}

    # ---------------------------------------------------------------------------------------- simple path
    def _prepare_simple(self):
        b, _, h, w = self.shape
        pos = self.positive.entries[0]
        sides = [self.negative.entries[0], pos] if self.do_cfg else [pos]
        tokens = batch_tokens([e.embeds.shape[1] for e in sides])
        self.embeds = torch.cat([_repeat_tokens(self._embeds(e, b), tokens) for e in sides])
        self.added = self._added(sides, b, h, w)
        if self.concat is not None:
            self.concat_batch = torch.cat([self.concat] * len(sides))

    def _embeds(self, entry: CondEntry, n: int) -> torch.Tensor:
        embeds = entry.embeds.to(device=self.device, dtype=self.dtype)
        return embeds.repeat(1, n, 1).view(embeds.shape[0] * n, embeds.shape[1], -1)

    def _added(self, entries: list[CondEntry], n: int, h: int, w: int) -> dict | None:
        if self.model.arch != SDXL:
            return None
        if any(e.pooled is None for e in entries):
            raise ValueError("SDXL needs pooled text embeddings: encode the prompts with an SDXL CLIP")
        text = torch.cat([e.pooled.to(device=self.device, dtype=self.dtype).repeat(1, n).view(n, -1)
                          for e in entries])
        ids = torch.cat([time_ids(e, h * 8, w * 8).to(device=self.device, dtype=self.dtype).repeat(n, 1)
                         for e in entries])
        return {"text_embeds": text, "time_ids": ids}

    # --------------------------------------------------------------------------------------- general path
    def _prepare(self, cond: Conditioning, ms: ModelSampling) -> list[_Prepared]:
        _, _, h, w = self.shape
        out = []
        for entry in cond.entries:
            area, mask = resolve_area(entry, h, w)
            out.append(_Prepared(entry, area, mask, ms.percent_to_sigma(entry.start_percent),
                                 ms.percent_to_sigma(entry.end_percent)))
        return out

    @staticmethod
    def _add_area_twins(positive: list[_Prepared], negative: list[_Prepared]) -> None:
        for p in positive:
            if p.area is None:
                continue
            smallest = None
            for n in negative:
                if n.area is not None:
                    if _encloses(n.area, p.area) and (smallest is None or smallest.area is None
                                                      or smallest.area[0] * smallest.area[1] > n.area[0] * n.area[1]):
                        smallest = n
                elif smallest is None:
                    smallest = n
            if smallest is None or smallest.area == p.area:
                continue
            s = smallest.entry
            twin = p.entry.replace(embeds=s.embeds, pooled=s.pooled, add_time_ids=s.add_time_ids)
            negative.append(_Prepared(twin, p.area, p.mask, p.sigma_start, p.sigma_end))

    def _side(self, x_in: torch.Tensor, t, sigma: float, uncond: bool, entries: list[_Prepared]) -> torch.Tensor:
        b, c, h, w = x_in.shape
        out = torch.zeros_like(x_in)
        count = torch.full_like(x_in, 1e-37)
        state = self.state
        for p in entries:
            if not p.acts(sigma):
                continue
            ah, aw, ay, ax = p.area if p.area is not None else (h, w, 0, 0)
            if p.mult is None:
                p.mult = weight(p.entry, p.area, p.mask, b, c, h, w).to(device=x_in.device, dtype=x_in.dtype)
            crop = x_in[:, :, ay:ay + ah, ax:ax + aw]
            if self.concat is not None:
                crop = torch.cat([crop, self.concat[:, :, ay:ay + ah, ax:ax + aw]], dim=1)
            state.do_cfg, state.uncond_only, state.latent_hw = False, uncond, (ah, aw)
            state.extra = self._extras.setdefault((ah, aw), {})
            embeds = self._embeds(p.entry, b)
            added = self._added([p.entry], b, h, w)
            down, mid = self._controls(Conditioning(entries=(p.entry,)), crop, t, embeds, added)  # alone: no CFG
            o = unet_call(self.model.unet, crop, t, embeds, added, down, mid)
            out[:, :, ay:ay + ah, ax:ax + aw] += o * p.mult
            count[:, :, ay:ay + ah, ax:ax + aw] += p.mult
        state.do_cfg, state.uncond_only, state.latent_hw = self.do_cfg, False, (h, w)
        return out / count

    def _controls(self, cond: Conditioning, model_input, t, embeds, added):
        if not cond.controls:
            return None, None
        from ..controlnet.model import control_residuals

        return control_residuals(cond, cond, self.state, model_input, t, embeds, added, self.device, self.dtype)

    # -------------------------------------------------------------------------------------------- the call
    def __call__(self, x_in: torch.Tensor, t, sigma: float) -> torch.Tensor:
        if self.simple:
            model_input = torch.cat([x_in] * 2) if self.do_cfg else x_in
            if self.concat is not None:
                model_input = torch.cat([model_input, self.concat_batch], dim=1)
            down = mid = None
            if self.positive.controls or (self.do_cfg and self.negative.controls):
                from ..controlnet.model import control_residuals

                negative = self.negative if self.do_cfg else self.positive
                down, mid = control_residuals(self.positive, negative, self.state, model_input, t, self.embeds,
                                              self.added, self.device, self.dtype)
            out = unet_call(self.model.unet, model_input, t, self.embeds, self.added, down, mid)
            if not self.do_cfg:
                return out
            uncond, cond = out.chunk(2)
        else:
            results = {u: self._side(x_in, t, sigma, u, entries) for u, entries in self.sides}
            cond = results[False]
            if not self.do_cfg:
                return cond
            uncond = results[True]
        return uncond + self.cfg * (cond - uncond)
