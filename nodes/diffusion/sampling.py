"""KSampler: the denoising loop, step for step the one diffusers' Stable Diffusion pipelines run.

The loop follows StableDiffusion(XL)Pipeline / Img2Img / Inpaint so that, for the same weights, scheduler,
seed and settings, the latents match diffusers (the oracle tests prove it). Noise comes from a CPU generator
seeded with ``seed`` (same images on CPU and CUDA). ``denoise`` is diffusers' img2img ``strength``: 1.0 starts
from pure noise (the input latent gives only the size), below 1.0 the input latent is noised to the matching
timestep and only the remaining steps run.

Patches carried by the MODEL handle (IP-Adapter) and ControlNets carried by the conditionings are installed
for the duration of this call only; the shared UNet is left as it was found.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node
from ipgraph.limits import LimitError, check_output_size, check_work

from ..core.patches import install_patches
from ..core.types import SDXL, Conditioning, Latent, ModelHandle, SamplingState
from ..core.widgets import runtime_of
from .samplers import SamplerName, ScheduleName, make_scheduler, step_kwargs, supports_karras

# Cheap latent → RGB approximations for live previews (linear maps of the 4 latent channels).
_PREVIEW_FACTORS = {
    "sd15": [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721],
             [-0.2120, -0.2616, -0.7177]],
    "sdxl": [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
             [-0.3165, -0.2492, -0.2188]],
}


class KSamplerIn(NodeInputs):
    model: Any = Socket("MODEL")
    positive: Any = Socket("CONDITIONING")
    negative: Any = Socket("CONDITIONING")
    latent_image: Any = Socket("LATENT")
    seed: int = Field(0, ge=0, le=2**64 - 1, description="noise seed",
                      json_schema_extra={"control_after_generate": True})
    steps: int = Field(20, ge=1, le=1000)
    cfg: float = Field(7.5, ge=0.0, le=100.0, description="classifier-free guidance scale (<= 1: no guidance)")
    sampler_name: SamplerName = "euler"
    scheduler: ScheduleName = "normal"
    denoise: float = Field(1.0, ge=0.0, le=1.0, description="1 = from noise; lower keeps more of the input latent")


class LatentOut(NodeOutputs):
    latent: Any = Output("LATENT")


def _check(literals: dict, runtime):
    if literals["scheduler"] == "karras" and not supports_karras(literals["sampler_name"]):
        yield "scheduler", f"the {literals['sampler_name']} sampler has no karras schedule; use 'normal'"


@node("KSampler", category="sampling", check=_check)
def ksampler(inp: KSamplerIn, ctx: NodeContext) -> LatentOut:
    """Denoise a latent with the model, guided by the positive and negative conditioning."""
    runtime = runtime_of(ctx)
    model: ModelHandle = inp.model
    latent: Latent = inp.latent_image
    check_latent_fits_model(latent, model)
    check_job_size(latent, inp.steps, runtime)
    if inp.denoise <= 0:
        return LatentOut(latent=latent)
    with runtime.models.on_device(model.unet, *_control_models(inp.positive, inp.negative)):
        samples = sample(model, inp.positive, inp.negative, latent, seed=inp.seed, steps=inp.steps, cfg=inp.cfg,
                         sampler=inp.sampler_name, schedule=inp.scheduler, denoise=inp.denoise,
                         device=runtime.device, dtype=runtime.dtype, on_step=_progress(ctx, model.arch))
    return LatentOut(latent=latent.replace(samples=samples))


def check_job_size(latent: Latent, steps: int, runtime) -> None:
    """The user's output-size and work limits, checked before the first step (frames count as batch)."""
    batch, _, h, w = latent.samples.shape
    problem = check_output_size(w * 8, h * 8, runtime.limits)
    if problem:
        raise LimitError(problem)
    check_work(batch, w * 8, h * 8, steps, runtime.limits)


def check_latent_fits_model(latent: Latent, model: ModelHandle) -> None:
    wanted = model.in_channels
    have = latent.samples.shape[1] + (latent.concat.shape[1] if latent.concat is not None else 0)
    if wanted == 9 and latent.concat is None:
        raise ValueError("this is a 9-channel inpainting model: build its latent with InpaintModelConditioning "
                         "(image, mask) rather than EmptyLatentImage/VAEEncode")
    if have != wanted:
        raise ValueError(f"the latent has {have} channels but the model expects {wanted}")


def _control_models(*conds: Conditioning) -> list:
    return [c.model for cond in conds for c in cond.controls if hasattr(c, "model")]


def _progress(ctx: NodeContext, arch: str):
    def on_step(i: int, total: int, x0: torch.Tensor) -> None:
        ctx.progress(i, total, preview=latent_preview(x0, arch))

    return on_step


def latent_preview(samples: torch.Tensor, arch: str, size: int = 256) -> Image.Image:
    """First image of a latent batch as a small RGB picture (no VAE: a linear map of the channels)."""
    factors = torch.tensor(_PREVIEW_FACTORS.get(arch, _PREVIEW_FACTORS["sd15"]), dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", samples[0, :4].detach().float().cpu(), factors)
    array = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(array))
    scale = max(1, size // max(image.size))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def _batch(cond: Conditioning, n: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    embeds = cond.embeds.to(device=device, dtype=dtype)
    embeds = embeds.repeat(1, n, 1).view(embeds.shape[0] * n, embeds.shape[1], -1)
    pooled = None if cond.pooled is None else cond.pooled.to(device=device, dtype=dtype).repeat(1, n).view(n, -1)
    return embeds, pooled


def _time_ids(cond: Conditioning, height: int, width: int) -> torch.Tensor:
    """SDXL size conditioning: (original h, w, crop top, left, target h, w); zeros mean the image size."""
    default = [height, width, 0, 0, height, width]
    if cond.add_time_ids is None:
        return torch.tensor([default], dtype=torch.float32)
    values = cond.add_time_ids[0].tolist()
    for i in (0, 1, 4, 5):
        values[i] = values[i] or default[i]
    return torch.tensor([values], dtype=torch.float32)


@torch.no_grad()
def sample(model: ModelHandle, positive: Conditioning, negative: Conditioning, latent: Latent, *, seed: int,
           steps: int, cfg: float, sampler: str, schedule: str, denoise: float, device, dtype,
           on_step=None) -> torch.Tensor:
    """Run the denoising loop; returns the final latents on the CPU in float32."""
    unet = model.unet
    scheduler = make_scheduler(sampler, schedule, model.scheduler_config)
    generator = torch.Generator("cpu").manual_seed(seed)
    do_cfg = cfg > 1.0
    batch = latent.samples.shape[0]

    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps
    if denoise < 1.0:  # diffusers' Img2Img get_timesteps
        init_timestep = min(int(steps * denoise), steps)
        t_start = max(steps - init_timestep, 0)
        timesteps = scheduler.timesteps[t_start * scheduler.order:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        if len(timesteps) == 0:
            return latent.samples.clone()

    init = latent.samples.to(device=device, dtype=dtype)
    noise = randn_tensor(tuple(init.shape), generator=generator, device=torch.device(device), dtype=dtype)
    if denoise >= 1.0:
        latents = noise * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(init, noise, timesteps[:1].repeat(batch))

    pos, pos_pooled = _batch(positive, batch, device, dtype)
    neg, neg_pooled = _batch(negative, batch, device, dtype)
    embeds = torch.cat([neg, pos]) if do_cfg else pos
    added = None
    if model.arch == SDXL:
        height, width = latent.samples.shape[2] * 8, latent.samples.shape[3] * 8
        pos_ids = _time_ids(positive, height, width).to(device=device, dtype=dtype).repeat(batch, 1)
        neg_ids = _time_ids(negative, height, width).to(device=device, dtype=dtype).repeat(batch, 1)
        if pos_pooled is None or neg_pooled is None:
            raise ValueError("SDXL needs pooled text embeddings: encode the prompts with an SDXL CLIP")
        added = {"text_embeds": torch.cat([neg_pooled, pos_pooled]) if do_cfg else pos_pooled,
                 "time_ids": torch.cat([neg_ids, pos_ids]) if do_cfg else pos_ids}

    concat = None
    if latent.concat is not None:  # 9-channel inpainting: [mask, masked image latents]
        concat = latent.concat.to(device=device, dtype=dtype)
        concat = torch.cat([concat] * 2) if do_cfg else concat
    blend_mask = None
    if latent.noise_mask is not None and latent.concat is None:  # 4-channel inpainting (diffusers' blend)
        blend_mask = latent.noise_mask.to(device=device, dtype=dtype)

    state = SamplingState(total_steps=len(timesteps), latent_hw=tuple(latent.samples.shape[2:]), do_cfg=do_cfg,
                          batch_size=batch)
    extra_step = step_kwargs(scheduler, generator)
    controls = ControlSet(positive, negative, state, device, dtype)
    with ExitStack() as stack:
        install_patches(stack, model.unet, model.patches, state)
        for i, t in enumerate(timesteps):
            state.step = i
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            if concat is not None:
                model_input = torch.cat([model_input, concat], dim=1)
            down, mid = controls.residuals(model_input, t, embeds, added)
            noise_pred = unet(model_input, t, encoder_hidden_states=embeds, added_cond_kwargs=added,
                              down_block_additional_residuals=down, mid_block_additional_residual=mid,
                              return_dict=False)[0]
            if do_cfg:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + cfg * (cond - uncond)
            out = scheduler.step(noise_pred, t, latents, **extra_step, return_dict=True)
            latents = out.prev_sample
            if blend_mask is not None:
                proper = init
                if i < len(timesteps) - 1:
                    proper = scheduler.add_noise(init, noise, timesteps[i + 1: i + 2])
                latents = (1 - blend_mask) * proper + blend_mask * latents
            if on_step is not None:
                on_step(i + 1, len(timesteps), getattr(out, "pred_original_sample", None)
                        if getattr(out, "pred_original_sample", None) is not None else latents)
    return latents.float().cpu()


class ControlSet:
    """The ControlNets attached to the conditionings; yields the UNet residuals for each step."""

    def __init__(self, positive: Conditioning, negative: Conditioning, state: SamplingState, device, dtype):
        self.positive, self.negative, self.state = positive, negative, state
        self.device, self.dtype = device, dtype
        self.active = bool(positive.controls or negative.controls)

    def residuals(self, model_input, t, embeds, added):
        if not self.active:
            return None, None
        from ..controlnet.model import control_residuals

        return control_residuals(self.positive, self.negative, self.state, model_input, t, embeds, added,
                                 self.device, self.dtype)
