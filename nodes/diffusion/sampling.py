"""KSampler and KSamplerAdvanced (ComfyUI's nodes) and the sampling loop behind every sampler node.

One loop serves KSampler, KSamplerAdvanced and SamplerCustom(Advanced). It runs a (sampler, schedule) pair
one of two ways (``samplers.py`` says which pairs go where):

- **diffusers**: step for step the loop of diffusers' Stable Diffusion pipelines (txt2img, img2img, the
  4-channel inpaint blend), so the latents equal the pipelines' for the same weights, scheduler, seed and
  settings (the oracle tests prove it). A schedule part ``[start, end)`` of ``total`` steps runs the
  scheduler's timesteps from index ``start`` (as img2img does) and stops at ``end``. A run from the first
  step starts from ``noise * init_noise_sigma`` alone (the input latent only gives the size, as in the
  pipelines; ComfyUI adds the latent to the noise). A latent returned with
  leftover noise (and one read back without added noise) is in ComfyUI's convention ``x = x0 + sigma * eps``
  (VP schedulers' samples are rescaled by ``sqrt(alphas_cumprod)`` on the way out and in).
- **k-diffusion**: ComfyUI's sampling on sigmas: ``x = latent + noise * sigma_0`` (``sqrt(1 + sigma_0^2)``
  when sigma_0 is the model's largest), the model called on ``x / sqrt(1 + sigma^2)`` at the nearest
  training timestep, x0 predicted per ``ModelSamplingDiscrete``'s kind, the 4-channel inpaint mask applied to
  the model's input and x0 (ComfyUI's KSamplerX0Inpaint), the algorithm from ``kdiffusion.py``.

``steps`` and ``denoise`` mean what they mean in ComfyUI: ``denoise < 1`` runs ``steps`` steps of a
``int(steps / denoise)``-step schedule, the last ones (diffusers' img2img with ``num_inference_steps =
int(steps / denoise)`` and ``strength = denoise``). Noise comes from a CPU generator seeded with the seed,
``torch.randn(latent shape)`` (ComfyUI's and diffusers' noise alike; same images on CPU and CUDA).

Patches carried by the MODEL handle (IP-Adapter, ...) and ControlNets carried by the conditionings are
installed for the duration of one call only; the shared UNet is left as it was found.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node
from ipgraph.limits import LimitError, check_output_size, check_work

from ..core.patches import install_patches, patch_installer
from ..core.types import Conditioning, Latent, ModelHandle, SamplingState
from ..core.widgets import runtime_of
from . import kdiffusion
from .guidance import Guidance
from .samplers import (
    SAMPLERS,
    ModelSampling,
    SamplerName,
    ScheduleName,
    canonical,
    diffusers_overrides,
    kdiffusion_sigmas,
    make_scheduler,
    step_kwargs,
)

SEED_MAX = 0xFFFFFFFFFFFFFFFF

# Cheap latent → RGB approximations for live previews (linear maps of the 4 latent channels).
_PREVIEW_FACTORS = {
    "sd15": [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721],
             [-0.2120, -0.2616, -0.7177]],
    "sdxl": [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
             [-0.3165, -0.2492, -0.2188]],
}


# ------------------------------------------------------------------------------------ model sampling patch
@dataclass(frozen=True)
class ModelSamplingPatch:
    """ModelSamplingDiscrete's choice: what the UNet predicts (eps, v_prediction, lcm, x0) and zero-SNR."""

    kind: str
    zsnr: bool = False


@patch_installer(ModelSamplingPatch)
def _install_model_sampling(unet, patches, state):
    return nullcontext()  # read by the sampler (model_sampling_of); nothing changes in the UNet


def model_sampling_of(model: ModelHandle) -> ModelSampling:
    """The handle's noise schedule: the last ModelSamplingDiscrete on it, else the checkpoint's config."""
    config = model.scheduler_config
    kind = "v_prediction" if config.get("prediction_type") == "v_prediction" else "eps"
    zsnr = bool(config.get("rescale_betas_zero_snr", False))
    for patch in model.patches:
        if isinstance(patch, ModelSamplingPatch):
            kind, zsnr = patch.kind, patch.zsnr
    return ModelSampling(config, kind, zsnr)


# ------------------------------------------------------------------------------------------ the sampling call
@dataclass(frozen=True)
class Plan:
    """A named schedule of ``total`` steps of which steps ``[start, end)`` run; ``zero_end``: the last sigma is
    set to 0 (full denoise) when ``end < total`` (KSamplerAdvanced without leftover noise)."""

    schedule: str
    total: int
    start: int = 0
    end: int | None = None
    zero_end: bool = False

    @property
    def stop(self) -> int:
        return self.total if self.end is None else min(self.end, self.total)

    def sigmas(self, ms: ModelSampling, sampler: str) -> torch.Tensor:
        """ComfyUI's sigmas for this plan (KSampler.sample's slicing)."""
        sigmas = kdiffusion_sigmas(ms, sampler, self.schedule, self.total)
        if self.stop < len(sigmas) - 1:
            sigmas = sigmas[: self.stop + 1].clone()
            if self.zero_end:
                sigmas[-1] = 0.0
        return sigmas[self.start:] if self.start < len(sigmas) - 1 else sigmas[:0]


@dataclass(frozen=True)
class SampleResult:
    samples: torch.Tensor  # CPU float32
    denoised: torch.Tensor  # the last x0 prediction (SamplerCustom's denoised_output)


def uses_diffusers(model: ModelHandle, sampler: str, plan: Plan | torch.Tensor) -> bool:
    """Whether this call runs a diffusers scheduler (else ComfyUI's k-diffusion algorithm on sigmas)."""
    if not isinstance(plan, Plan) or diffusers_overrides(sampler, plan.schedule) is None:
        return False
    if plan.zero_end and plan.stop < plan.total:
        return False
    return model_sampling_of(model).kind in ("eps", "v_prediction")


@torch.no_grad()
def run_sampling(model: ModelHandle, positive: Conditioning, negative: Conditioning | None, latent: Latent, *,
                 cfg: float, sampler: str, plan: Plan | torch.Tensor, seed: int | list[int], add_noise: bool = True,
                 device, dtype, on_step=None, split: list[int] | None = None) -> SampleResult:
    """Sample ``latent`` with the guided model (``negative`` None: no guidance). ``plan`` is a named schedule
    or explicit sigmas (SIGMAS); ``add_noise`` False starts from the latent as it is (leftover noise).
    ``seed`` also drives the stochastic samplers' noise. Returns CPU float32 latents.

    Several jobs in one call (``batch.py``): ``latent`` is their latents stacked, ``split`` the batch of each
    and ``seed`` their seeds; each job's noise (initial and per step) comes from its own seed exactly as it
    would alone (per-step diffusers noise needs one image per job: ``batch.batchable`` checks)."""
    ms = model_sampling_of(model)
    init = latent.samples.to(device=device, dtype=dtype)
    if isinstance(seed, (list, tuple)):
        split = list(split or [1] * len(seed))
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seed]
        generator = generators if all(b == 1 for b in split) else generators[0]
        noise = None
        if add_noise:
            noise = torch.cat([randn_tensor((b, *init.shape[1:]), generator=g, device=torch.device(device),
                                            dtype=dtype) for g, b in zip(generators, split, strict=True)])
        seed = list(zip(seed, split, strict=True))
    else:
        generator = torch.Generator("cpu").manual_seed(int(seed))
        noise = None
        if add_noise:
            noise = randn_tensor(tuple(init.shape), generator=generator, device=torch.device(device), dtype=dtype)
    state = SamplingState(batch_size=init.shape[0], latent_hw=tuple(init.shape[2:]))
    concat = latent.concat
    guidance = Guidance(model, positive, negative, cfg, tuple(init.shape), ms, state, device, dtype, concat)
    with ExitStack() as stack:
        install_patches(stack, model.unet, model.patches, state)
        if uses_diffusers(model, sampler, plan):
            return _run_diffusers(model, guidance, latent, init, noise, sampler, plan, ms, generator, state,
                                  on_step, device)
        sigmas = plan.sigmas(ms, sampler) if isinstance(plan, Plan) else plan
        return _run_kdiffusion(guidance, latent, init, noise, sampler, sigmas, ms, seed, state, on_step, device)


def _x0(ms: ModelSampling, x: torch.Tensor, out: torch.Tensor, sigma: float) -> torch.Tensor:
    """x0 predicted from the model output at noise level sigma (x in the VE convention)."""
    if ms.kind == "x0":
        return out
    if ms.kind == "v_prediction":
        return x / (sigma ** 2 + 1) - out * sigma / (sigma ** 2 + 1) ** 0.5
    x0 = x - out * sigma
    if ms.kind == "lcm":  # LCM's boundary condition (ComfyUI's ModelSamplingDiscrete "lcm")
        scaled = ms.timestep(sigma) * 10.0
        c_skip = 0.25 / (scaled ** 2 + 0.25)
        c_out = scaled / (scaled ** 2 + 0.25) ** 0.5
        return c_out * x0 + c_skip * x
    return x0


def _run_kdiffusion(guidance, latent, init, noise, sampler, sigmas, ms, seed, state, on_step, device):
    name = canonical(sampler)
    if name not in kdiffusion.SAMPLERS:
        raise ValueError(f"the {sampler} sampler runs only through its diffusers scheduler, which cannot follow "
                         "these sigmas; pick a BasicScheduler schedule it supports or another sampler")
    sigmas = [float(s) for s in sigmas]
    if len(sigmas) < 2:
        return SampleResult(latent.samples.clone(), latent.samples.clone())
    x = init
    if noise is not None:
        s0 = sigmas[0]
        scale = math.sqrt(1.0 + s0 * s0) if (math.isclose(ms.sigma_max, s0, rel_tol=1e-5) or s0 > ms.sigma_max) else s0
        x = init + noise * scale
    mask = latent.noise_mask.to(device=device, dtype=init.dtype) if (
        latent.noise_mask is not None and latent.concat is None) else None
    base_noise = noise if noise is not None else torch.zeros_like(init)
    state.total_steps = len(sigmas) - 1
    last = {"x0": init}

    def denoise(x, sigma):
        if mask is not None:
            x = x * mask + (init + base_noise * sigma) * (1 - mask)
        t = torch.tensor(ms.timestep(sigma), device=device)
        out = guidance(x / math.sqrt(sigma * sigma + 1.0), t, sigma)
        x0 = _x0(ms, x, out, sigma)
        if mask is not None:
            x0 = x0 * mask + init * (1 - mask)
        last["x0"] = x0
        return x0

    def callback(i, denoised):
        state.step = i + 1 if i + 1 < state.total_steps else i
        if on_step is not None:
            on_step(i + 1, state.total_steps, denoised)

    state.step = 0
    if isinstance(seed, list):  # several jobs: each one's noise from its own seed, stacked
        draws = [kdiffusion.noise_source((b, *init.shape[1:]), s) for s, b in seed]
        draw = lambda: torch.cat([d() for d in draws])  # noqa: E731
    else:
        draw = kdiffusion.noise_source(tuple(init.shape), seed)  # float32 on the CPU, as ComfyUI's
    noise_fn = lambda: draw().to(device=device, dtype=init.dtype)  # noqa: E731
    x = kdiffusion.SAMPLERS[name](denoise, x, sigmas, noise_fn, callback)
    if mask is not None:
        x = x * mask + init * (1 - mask)
    return SampleResult(x.float().cpu(), last["x0"].float().cpu())


def _run_diffusers(model, guidance, latent, init, noise, sampler, plan: Plan, ms, generator, state, on_step,
                   device):
    extra = {"prediction_type": "v_prediction" if ms.kind == "v_prediction" else "epsilon"}
    if ms.zsnr:
        extra["rescale_betas_zero_snr"] = True
    scheduler = make_scheduler(sampler, plan.schedule, model.scheduler_config, extra)
    scheduler.set_timesteps(plan.total, device=device)
    order = scheduler.order
    full = scheduler.timesteps
    start = plan.start * order
    stop = len(full) if plan.stop >= plan.total else plan.stop * order  # PNDM has one timestep more
    timesteps = full[start:stop]
    if len(timesteps) == 0:
        return SampleResult(latent.samples.clone(), latent.samples.clone())
    if start > 0 and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    vp = SAMPLERS[canonical(sampler)].vp

    def alpha_bar(t) -> float:
        return float(scheduler.alphas_cumprod[int(t)])

    into = math.sqrt(alpha_bar(timesteps[0])) if vp else 1.0  # a VE latent in this scheduler's sample space
    if noise is None:
        latents = init * into
    elif start == 0:  # diffusers' pipelines: at full denoise the input latent only gives the size
        latents = noise * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(init, noise, timesteps[:1].repeat(init.shape[0]))
    blend_mask = None
    if latent.noise_mask is not None and latent.concat is None:  # 4-channel inpainting (diffusers' blend)
        blend_mask = latent.noise_mask.to(device=device, dtype=init.dtype)
    base_noise = noise if noise is not None else torch.zeros_like(init)
    state.total_steps = len(timesteps)
    kwargs = step_kwargs(scheduler, generator)
    x0 = init
    for i, t in enumerate(timesteps):
        state.step = i
        sigma = ms.sigma(float(t))
        output = guidance(scheduler.scale_model_input(latents, t), t, sigma)
        x0 = _x0(ms, latents * (math.sqrt(1 + sigma * sigma) if vp else 1.0), output, sigma)
        latents = scheduler.step(output, t, latents, **kwargs, return_dict=True).prev_sample
        if blend_mask is not None:
            proper = init
            if i < len(timesteps) - 1:
                proper = scheduler.add_noise(init, base_noise, timesteps[i + 1: i + 2])
            latents = (1 - blend_mask) * proper + blend_mask * latents
        if on_step is not None:
            on_step(i + 1, len(timesteps), x0)
    if vp and stop < len(full):  # leftover noise: back to x = x0 + sigma * eps
        latents = latents / math.sqrt(alpha_bar(full[stop]))
    return SampleResult(latents.float().cpu(), x0.float().cpu())


@torch.no_grad()
def sample(model: ModelHandle, positive: Conditioning, negative: Conditioning, latent: Latent, *, seed: int,
           steps: int, cfg: float, sampler: str, schedule: str, denoise: float, device, dtype,
           on_step=None) -> torch.Tensor:
    """KSampler's sampling as a function; returns the final latents on the CPU in float32."""
    if denoise <= 0:
        return latent.samples.clone()
    total = steps if denoise >= 0.9999 else int(steps / denoise)
    plan = Plan(schedule, total, start=total - steps)
    return run_sampling(model, positive, negative, latent, cfg=cfg, sampler=sampler, plan=plan, seed=seed,
                        device=device, dtype=dtype, on_step=on_step).samples


# ---------------------------------------------------------------------------------------------------- nodes
def Seed(description: str = "noise seed") -> Any:  # noqa: N802
    return Field(0, ge=0, le=SEED_MAX, description=description, json_schema_extra={"control_after_generate": True})


def Steps() -> Any:  # noqa: N802
    return Field(20, ge=1, le=10000)


def Cfg() -> Any:  # noqa: N802
    return Field(8.0, ge=0.0, le=100.0, description="classifier-free guidance scale (1 = none)",
                 json_schema_extra={"step": 0.1, "round": 0.01})


class KSamplerIn(NodeInputs):
    model: Any = Socket("MODEL")
    seed: int = Seed()
    steps: int = Steps()
    cfg: float = Cfg()
    sampler_name: SamplerName = "euler"
    scheduler: ScheduleName = "simple"
    positive: Any = Socket("CONDITIONING")
    negative: Any = Socket("CONDITIONING")
    latent_image: Any = Socket("LATENT")
    denoise: float = Field(1.0, ge=0.0, le=1.0, description="1 = from noise; lower keeps more of the input latent",
                           json_schema_extra={"step": 0.01})


class LatentOut(NodeOutputs):
    LATENT: Any = Output("LATENT")


@node("KSampler", category="sampling", display_name="KSampler", renamed_outputs={"latent": "LATENT"})
def ksampler(inp: KSamplerIn, ctx: NodeContext) -> LatentOut:
    """Denoise a latent with the model, guided by the positive and negative conditioning."""
    runtime = runtime_of(ctx)
    check_latent_fits_model(inp.latent_image, inp.model)
    if inp.denoise <= 0:
        return LatentOut(LATENT=inp.latent_image)
    total = inp.steps if inp.denoise >= 0.9999 else int(inp.steps / inp.denoise)
    plan = Plan(inp.scheduler, total, start=total - inp.steps)
    result = sample_node(ctx, inp.model, inp.positive, inp.negative, inp.latent_image, cfg=inp.cfg,
                         sampler=inp.sampler_name, plan=plan, seed=inp.seed, runtime=runtime)
    return LatentOut(LATENT=inp.latent_image.replace(samples=result.samples))


class KSamplerAdvancedIn(NodeInputs):
    model: Any = Socket("MODEL")
    add_noise: Literal["enable", "disable"] = "enable"
    noise_seed: int = Seed()
    steps: int = Steps()
    cfg: float = Cfg()
    sampler_name: SamplerName = "euler"
    scheduler: ScheduleName = "simple"
    positive: Any = Socket("CONDITIONING")
    negative: Any = Socket("CONDITIONING")
    latent_image: Any = Socket("LATENT")
    start_at_step: int = Field(0, ge=0, le=10000)
    end_at_step: int = Field(10000, ge=0, le=10000)
    return_with_leftover_noise: Literal["disable", "enable"] = "disable"


@node("KSamplerAdvanced", category="sampling", display_name="KSampler (Advanced)")
def ksampler_advanced(inp: KSamplerAdvancedIn, ctx: NodeContext) -> LatentOut:
    """Run steps [start_at_step, end_at_step) of a steps-long schedule; with leftover noise the result can be
    finished by a second KSamplerAdvanced (add_noise disabled) starting where this one ended."""
    runtime = runtime_of(ctx)
    check_latent_fits_model(inp.latent_image, inp.model)
    plan = Plan(inp.scheduler, inp.steps, start=inp.start_at_step, end=inp.end_at_step,
                zero_end=inp.return_with_leftover_noise != "enable")
    if plan.start >= plan.stop:
        return LatentOut(LATENT=inp.latent_image)
    result = sample_node(ctx, inp.model, inp.positive, inp.negative, inp.latent_image, cfg=inp.cfg,
                         sampler=inp.sampler_name, plan=plan, seed=inp.noise_seed,
                         add_noise=inp.add_noise == "enable", runtime=runtime)
    return LatentOut(LATENT=inp.latent_image.replace(samples=result.samples))


def sample_node(ctx: NodeContext, model: ModelHandle, positive, negative, latent: Latent, *, cfg, sampler, plan,
                seed, runtime, add_noise: bool = True) -> SampleResult:
    """What every sampler node does: move the models to the device, sample, report progress."""
    steps = plan.stop - plan.start if isinstance(plan, Plan) else len(plan) - 1  # a Plan, or SIGMAS
    check_job_size(latent, max(0, steps), runtime)
    latent = with_inpaint_concat(latent, model)
    conds = [c for c in (positive, negative) if c is not None]
    if hasattr(runtime, "prepare"):
        runtime.prepare(model.unet)
    with runtime.models.on_device(model.unet, *_control_models(*conds)):
        return run_sampling(model, positive, negative, latent, cfg=cfg, sampler=sampler, plan=plan, seed=seed,
                            add_noise=add_noise, device=runtime.device, dtype=runtime.dtype,
                            on_step=_progress(ctx, model.arch))


def with_inpaint_concat(latent: Latent, model: ModelHandle) -> Latent:
    """ComfyUI's rule for a 9-channel inpainting model given a latent without inpaint conditioning
    (VAEEncodeForInpaint, SetLatentNoiseMask, a plain latent): the extra channels are [noise mask (all ones
    without one), the latent itself]. InpaintModelConditioning's latent already carries its own."""
    if model.in_channels != 9 or latent.concat is not None:
        return latent
    samples = latent.samples
    mask = latent.noise_mask if latent.noise_mask is not None else torch.ones_like(samples[:, :1])
    mask = mask.to(samples)
    if mask.ndim == 3:
        mask = mask[:, None]
    if tuple(mask.shape[-2:]) != tuple(samples.shape[-2:]):
        mask = torch.nn.functional.interpolate(mask, size=samples.shape[-2:], mode="bilinear")
    if mask.shape[0] != samples.shape[0]:
        mask = mask[:1].expand(samples.shape[0], -1, -1, -1)
    return latent.replace(concat=torch.cat([mask, samples], dim=1))


def check_job_size(latent: Latent, steps: int, runtime) -> None:
    """The user's output-size and work limits, checked before the first step (frames count as batch)."""
    batch, _, h, w = latent.samples.shape
    problem = check_output_size(w * 8, h * 8, runtime.limits)
    if problem:
        raise LimitError(problem)
    check_work(batch, w * 8, h * 8, steps, runtime.limits)


def check_latent_fits_model(latent: Latent, model: ModelHandle) -> None:
    wanted = model.in_channels
    have = latent.samples.shape[1] + (latent.concat.shape[1] if latent.concat is not None else 5 * (wanted == 9))
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
