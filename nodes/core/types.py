"""Values that travel along the links of a diffusion graph.

Every value here is immutable: a node that "changes" a model returns a new handle (``with_patch``) that
carries a description of the change. The loaded torch modules inside a handle are shared read-only across
every branch of every graph; KSampler installs the patches for the duration of sampling and removes them.

Tensor conventions follow ComfyUI's so users can carry values between the two:
IMAGE ``[B,H,W,C]`` float 0..1, MASK ``[B,H,W]`` float 0..1, LATENT a :class:`Latent` holding ``samples``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

SD15 = "sd15"
SDXL = "sdxl"


@dataclass(frozen=True, eq=False)
class ModelHandle:
    """The denoising UNet plus the patches (IP-Adapter, ...) to install while sampling.

    ``unet`` is a diffusers ``UNet2DConditionModel`` owned by the model manager; never modify it outside a
    patch's install/uninstall pair.
    """

    unet: Any
    arch: str  # SD15 | SDXL
    scheduler_config: dict
    source: str  # file the weights came from, for messages and pairing checks
    patches: tuple = ()

    def with_patch(self, patch: Any) -> ModelHandle:
        return replace(self, patches=self.patches + (patch,))

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def cache_nbytes(self) -> int:
        return 0  # weights are accounted for by the model manager, not the output cache


@dataclass(frozen=True, eq=False)
class ClipHandle:
    """Text encoder(s) and tokenizer(s): one pair for SD1.5, two for SDXL.

    ``layer`` is ComfyUI's ``stop_at_clip_layer`` set by CLIPSetLastLayer (-1 = the last layer, -2 the one
    before, ...); None means the architecture's default (SD1.5: last, SDXL: penultimate), as ComfyUI.

    ``patches`` (LoRA, merges) are installed around text encoding, as a MODEL's are around sampling.
    """

    text_encoders: tuple
    tokenizers: tuple
    arch: str
    source: str
    layer: int | None = None
    patches: tuple = ()

    def with_layer(self, layer: int) -> ClipHandle:
        return replace(self, layer=layer)

    def with_patch(self, patch: Any) -> ClipHandle:
        return replace(self, patches=self.patches + (patch,))

    def cache_nbytes(self) -> int:
        return 0


@dataclass(frozen=True, eq=False)
class VaeHandle:
    vae: Any  # diffusers AutoencoderKL
    arch: str
    source: str

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def cache_nbytes(self) -> int:
        return 0


@dataclass(frozen=True, eq=False)
class CondEntry:
    """One entry of a conditioning list (one element of ComfyUI's ``[[cond, {options}], ...]``).

    ``embeds`` ``[1, tokens, dim]``; SDXL adds ``pooled`` ``[1, dim2]`` and ``add_time_ids`` ``[1, 6]``
    (original size, crop top-left, target size). Where it acts:

    - ``area``: ``(h, w, y, x)`` in latent pixels, or ``("percentage", h, w, y, x)`` as fractions of the
      latent (resolved when sampling); None = the whole latent. ``strength`` multiplies its weight.
    - ``mask``: ``[B or 1, H, W]`` (any size; resized bilinearly to the latent), times ``mask_strength``;
      ``set_area_to_bounds`` restricts evaluation to the mask's bounding box.
    - ``start_percent``/``end_percent``: the fraction of the schedule in which it acts.
    - ``controls``: ControlNet applications (``Control``) evaluated with this entry.
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    add_time_ids: torch.Tensor | None = None
    controls: tuple = ()
    area: tuple | None = None
    strength: float = 1.0
    mask: torch.Tensor | None = None
    mask_strength: float = 1.0
    set_area_to_bounds: bool = False
    start_percent: float = 0.0
    end_percent: float = 1.0

    def replace(self, **changes: Any) -> CondEntry:
        return replace(self, **changes)

    @property
    def is_plain(self) -> bool:
        """Acts everywhere, always, at full weight: the one-call CFG batch of diffusers' pipelines applies."""
        return (self.area is None and self.mask is None and self.strength == 1.0 and self.start_percent <= 0.0
                and self.end_percent >= 1.0)


@dataclass(frozen=True, eq=False, init=False)
class Conditioning:
    """Conditioning for one side of classifier-free guidance: one or more :class:`CondEntry` (ComfyUI's
    CONDITIONING list). ``Conditioning(embeds, pooled, add_time_ids)`` builds the usual single entry;
    ``Conditioning(entries=...)`` any list. The sampler evaluates every entry and blends them (see
    ``nodes/diffusion/guidance.py``).

    ``embeds``/``pooled``/``add_time_ids`` read the first entry; ``controls`` lists the ControlNets of all
    entries (each once); ``with_control`` attaches a ControlNet to every entry, as ComfyUI's ControlNetApply.
    """

    entries: tuple[CondEntry, ...]

    def __init__(self, embeds: torch.Tensor | None = None, pooled: torch.Tensor | None = None,
                 add_time_ids: torch.Tensor | None = None, controls: tuple = (), *,
                 entries: tuple[CondEntry, ...] | None = None) -> None:
        if entries is None:
            if embeds is None:
                raise ValueError("a conditioning needs embeds or entries")
            entries = (CondEntry(embeds, pooled, add_time_ids, tuple(controls)),)
        if not entries:
            raise ValueError("a conditioning needs at least one entry")
        object.__setattr__(self, "entries", tuple(entries))

    @property
    def embeds(self) -> torch.Tensor:
        return self.entries[0].embeds

    @property
    def pooled(self) -> torch.Tensor | None:
        return self.entries[0].pooled

    @property
    def add_time_ids(self) -> torch.Tensor | None:
        return self.entries[0].add_time_ids

    @property
    def controls(self) -> tuple:
        seen, out = set(), []
        for entry in self.entries:
            for control in entry.controls:
                if id(control) not in seen:
                    seen.add(id(control))
                    out.append(control)
        return tuple(out)

    def with_control(self, control: Any) -> Conditioning:
        return self.map(lambda e: e.replace(controls=e.controls + (control,)))

    def map(self, fn) -> Conditioning:
        """A new conditioning with ``fn(entry)`` applied to every entry."""
        return Conditioning(entries=tuple(fn(e) for e in self.entries))

    def __add__(self, other: Conditioning) -> Conditioning:
        return Conditioning(entries=self.entries + other.entries)

    def cache_nbytes(self) -> int:
        total = 0
        for e in self.entries:
            for t in (e.embeds, e.pooled, e.add_time_ids, e.mask):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total


@dataclass(frozen=True, eq=False)
class Latent:
    """Latent samples ``[B,C,h,w]`` (unscaled by nothing: already multiplied by the VAE scaling factor).

    ``noise_mask`` ``[B,1,h,w]`` (1 = regenerate) restricts sampling to a region (inpainting).
    ``concat`` ``[B,5,h,w]`` is the masked-image conditioning of 9-channel inpainting models.
    """

    samples: torch.Tensor
    noise_mask: torch.Tensor | None = None
    concat: torch.Tensor | None = None

    def replace(self, **changes: Any) -> Latent:
        return replace(self, **changes)


@dataclass
class SamplingState:
    """Mutable per-sampling-call state that KSampler updates before each UNet evaluation.

    Patches (IP-Adapter attention processors, ControlNet) read it to decide whether they act at this step
    and how to lay their tensors out. It lives only for one KSampler call.
    """

    step: int = 0
    total_steps: int = 1
    uncond_only: bool = False  # do_cfg False and this UNet call's batch is all unconditional (negative)
    latent_hw: tuple[int, int] = (64, 64)  # latent height, width
    do_cfg: bool = True  # UNet batch is [uncond..., cond...] when True
    batch_size: int = 1  # images per side of the CFG batch
    extra: dict = field(default_factory=dict)

    @property
    def fraction_start(self) -> float:
        """Fraction of the schedule already done before this step (0 at the first step)."""
        return self.step / self.total_steps

    @property
    def fraction_end(self) -> float:
        """Fraction done once this step completes (1 at the last step)."""
        return (self.step + 1) / self.total_steps

    def active(self, start: float, end: float) -> bool:
        """diffusers' control-guidance rule: a patch with range [start, end] acts at this step."""
        return not (self.fraction_start < start or self.fraction_end > end)
