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

    ``patches`` (LoRA, merges) are installed around text encoding, as a MODEL's are around sampling.
    """

    text_encoders: tuple
    tokenizers: tuple
    arch: str
    source: str
    patches: tuple = ()

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
class Conditioning:
    """Text conditioning for one side of classifier-free guidance.

    ``embeds`` is ``[1, tokens, dim]``. SDXL adds ``pooled`` ``[1, dim2]`` and ``add_time_ids`` ``[1, 6]``
    (original size, crop top-left, target size). ``controls`` holds ControlNet applications attached by
    the ControlNet node, applied by KSampler.
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    add_time_ids: torch.Tensor | None = None
    controls: tuple = ()

    def with_control(self, control: Any) -> Conditioning:
        return replace(self, controls=self.controls + (control,))


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
