"""ComfyUI's sampler and scheduler names, mapped onto diffusers schedulers where diffusers has one.

A (sampler, scheduler) pair runs one of two ways (the README's sampler table lists every name):

- **diffusers**: the sampler names a diffusers scheduler class (``SAMPLERS``) and the scheduler name an
  option that class has (``SCHEDULES``): the class is built ``from_config`` of the checkpoint's scheduler
  config with those overrides, exactly as a diffusers pipeline built with
  ``Scheduler.from_config(pipe.scheduler.config, **overrides)``, and KSampler steps it as the pipelines do.
  The oracle tests compare each such pair with the diffusers pipeline (<= 1e-4 on latents).
- **k-diffusion**: otherwise (a sampler diffusers lacks, a schedule its class cannot express, explicit
  SIGMAS from KarrasScheduler/SDTurboScheduler, ModelSamplingDiscrete's lcm/x0, a schedule cut short with
  full denoise) the sigmas are computed as ComfyUI computes them (``comfy_sigmas``) and the k-diffusion
  algorithm of ``kdiffusion.py`` runs on them.

``ModelSampling`` is the checkpoint's discrete noise schedule in sigma form (ComfyUI's
ModelSamplingDiscrete): ``sigmas[t] = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t])``.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Literal, get_args

import diffusers
import numpy as np
import torch

# ComfyUI's names, in ComfyUI's order (KSampler.SAMPLERS / SCHEDULERS); ipgraph's "pndm" is appended.
SamplerName = Literal[
    "euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral", "dpmpp_sde",
    "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm",
    "lcm", "ddim", "uni_pc", "uni_pc_bh2", "pndm"]
ScheduleName = Literal["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal"]
SAMPLER_NAMES: tuple[str, ...] = get_args(SamplerName)
SCHEDULE_NAMES: tuple[str, ...] = get_args(ScheduleName)

# ComfyUI's _gpu spellings run the same sampler (ComfyUI only moves the Brownian tree to the GPU).
ALIASES = {"dpmpp_sde_gpu": "dpmpp_sde", "dpmpp_2m_sde_gpu": "dpmpp_2m_sde", "dpmpp_3m_sde_gpu": "dpmpp_3m_sde"}


@dataclass(frozen=True)
class SamplerInfo:
    diffusers: str | None  # scheduler class name
    overrides: tuple = ()  # (key, value) config overrides
    vp: bool = False  # the scheduler's samples are x / sqrt(1 + sigma^2) (VP), not x (VE)


SAMPLERS: dict[str, SamplerInfo] = {
    "euler": SamplerInfo("EulerDiscreteScheduler"),
    "euler_ancestral": SamplerInfo("EulerAncestralDiscreteScheduler"),
    "heun": SamplerInfo("HeunDiscreteScheduler"),
    "dpm_2": SamplerInfo("KDPM2DiscreteScheduler"),
    "dpm_2_ancestral": SamplerInfo("KDPM2AncestralDiscreteScheduler"),
    "lms": SamplerInfo("LMSDiscreteScheduler"),
    "dpmpp_2s_ancestral": SamplerInfo(None),
    "dpmpp_sde": SamplerInfo(None),  # diffusers' DPMSolverSDEScheduler needs torchsde
    "dpmpp_2m": SamplerInfo("DPMSolverMultistepScheduler",
                            (("algorithm_type", "dpmsolver++"), ("solver_order", 2)), vp=True),
    "dpmpp_2m_sde": SamplerInfo("DPMSolverMultistepScheduler",
                                (("algorithm_type", "sde-dpmsolver++"), ("solver_order", 2)), vp=True),
    "dpmpp_3m_sde": SamplerInfo("DPMSolverMultistepScheduler",
                                (("algorithm_type", "sde-dpmsolver++"), ("solver_order", 3)), vp=True),
    "ddpm": SamplerInfo("DDPMScheduler", vp=True),
    "lcm": SamplerInfo("LCMScheduler", vp=True),
    "ddim": SamplerInfo("DDIMScheduler", vp=True),
    # bh1 with a final sigma of 0 divides by zero in diffusers (NaN): it ends at sigma_min instead
    "uni_pc": SamplerInfo("UniPCMultistepScheduler", (("solver_type", "bh1"), ("final_sigmas_type", "sigma_min")),
                          vp=True),
    "uni_pc_bh2": SamplerInfo("UniPCMultistepScheduler", (("solver_type", "bh2"),), vp=True),
    "pndm": SamplerInfo("PNDMScheduler", vp=True),  # ipgraph's own: the SD1.5 checkpoints' default
}

# schedule name -> diffusers config overrides (the first key must exist in the class's config)
SCHEDULES: dict[str, tuple] = {
    "normal": (),  # the checkpoint's own timestep spacing
    "karras": (("use_karras_sigmas", True),),
    "exponential": (("use_exponential_sigmas", True),),
    "beta": (("use_beta_sigmas", True),),
    "sgm_uniform": (("timestep_spacing", "trailing"),),
    "simple": (("timestep_spacing", "trailing"),),
    "ddim_uniform": (("timestep_spacing", "leading"), ("steps_offset", 1)),
}

# ComfyUI drops the penultimate sigma of these samplers' schedules (k-diffusion path only).
DISCARD_PENULTIMATE = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}


def canonical(sampler: str) -> str:
    return ALIASES.get(sampler, sampler)


@cache
def _class_config_keys(class_name: str) -> frozenset:
    return frozenset(getattr(diffusers, class_name).from_config({}).config)


def diffusers_overrides(sampler: str, schedule: str) -> dict | None:
    """The diffusers class's config overrides for this pair, or None when diffusers cannot run it."""
    info = SAMPLERS[canonical(sampler)]
    if info.diffusers is None or schedule not in SCHEDULES:
        return None
    options = SCHEDULES[schedule]
    if options and options[0][0] not in _class_config_keys(info.diffusers):
        return None
    return dict(info.overrides) | dict(options)


def make_scheduler(sampler: str, schedule: str, config: dict, extra: dict | None = None):
    """A fresh diffusers scheduler for a pair ``diffusers_overrides`` accepts (schedulers are stateful)."""
    overrides = diffusers_overrides(sampler, schedule)
    if overrides is None:
        raise ValueError(f"diffusers has no scheduler for sampler {sampler!r} with schedule {schedule!r}")
    class_name = SAMPLERS[canonical(sampler)].diffusers
    keys = _class_config_keys(class_name)
    overrides |= {k: v for k, v in (extra or {}).items() if k in keys}
    merged = {k: v for k, v in dict(config).items() if not k.startswith("_")} | overrides
    return copy.deepcopy(_prototype(class_name, json.dumps(merged, sort_keys=True, default=str)))


@lru_cache(maxsize=64)
def _prototype(class_name: str, config_json: str):
    """Built once per configuration (some schedulers spend a second in __init__); callers get a deep copy."""
    return getattr(diffusers, class_name).from_config(json.loads(config_json))


def step_kwargs(scheduler, generator, eta: float = 0.0) -> dict:
    """What diffusers pipelines pass to ``scheduler.step`` (generator for stochastic samplers, eta for DDIM)."""
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


# ------------------------------------------------------------------------------------------ sigma schedules
class ModelSampling:
    """The checkpoint's discrete noise levels (ComfyUI's ModelSamplingDiscrete, float32 as ComfyUI keeps them).

    ``kind``: what the UNet predicts: ``eps``, ``v_prediction``, ``x0``, or ``lcm`` (eps plus LCM's boundary
    condition). ``zsnr`` rescales the schedule to zero terminal SNR (last alphas_cumprod = 4.897e-08, as
    ComfyUI).
    """

    def __init__(self, config: dict, kind: str = "eps", zsnr: bool = False):
        n = int(config.get("num_train_timesteps", 1000))
        start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
        if config.get("beta_schedule", "scaled_linear") == "linear":
            betas = torch.linspace(start, end, n, dtype=torch.float64)
        else:
            betas = torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if zsnr:
            alphas_cumprod = _zero_terminal_snr(alphas_cumprod)
        self.kind, self.zsnr = kind, zsnr
        self.alphas_cumprod = alphas_cumprod.float()
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: float) -> int:
        """The training timestep whose sigma is nearest in log space (ComfyUI feeds the UNet this integer)."""
        return int((math.log(sigma) - self.log_sigmas).abs().argmin())

    def sigma(self, t: float) -> float:
        """Sigma at a fractional timestep: linear interpolation of log sigma."""
        t = min(max(float(t), 0.0), len(self.sigmas) - 1.0)
        low, high = math.floor(t), math.ceil(t)
        w = t - low
        return math.exp((1 - w) * float(self.log_sigmas[low]) + w * float(self.log_sigmas[high]))

    def percent_to_sigma(self, percent: float) -> float:
        """ComfyUI's map from a fraction of the schedule to the sigma where it is reached."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma((1.0 - percent) * 999.0)


def _zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    sqrt_ab = alphas_cumprod.sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab ** 2
    ab[-1] = 4.8973451890853435e-08
    return ab


def _karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(max_inv + ramp * (min_inv - max_inv)) ** rho, torch.zeros(1)])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): ``(max^(1/rho) + ramp * (min^(1/rho) - max^(1/rho)))^rho``, then 0."""
    return _karras(n, sigma_min, sigma_max, rho)


def comfy_sigmas(ms: ModelSampling, schedule: str, steps: int) -> torch.Tensor:
    """ComfyUI's ``calculate_sigmas``: ``steps + 1`` descending sigmas ending at 0."""
    sig = ms.sigmas
    if schedule == "karras":
        return _karras(steps, ms.sigma_min, ms.sigma_max)
    if schedule == "exponential":
        return torch.cat([torch.linspace(math.log(ms.sigma_max), math.log(ms.sigma_min), steps).exp(),
                          torch.zeros(1)])
    if schedule in ("normal", "sgm_uniform"):
        start, end = ms.timestep(ms.sigma_max), ms.timestep(ms.sigma_min)
        ts = (torch.linspace(start, end, steps + 1)[:-1] if schedule == "sgm_uniform"
              else torch.linspace(start, end, steps))
        return torch.tensor([ms.sigma(float(t)) for t in ts] + [0.0])
    if schedule == "simple":
        ss = len(sig) / steps
        return torch.tensor([float(sig[-(1 + int(x * ss))]) for x in range(steps)] + [0.0])
    if schedule == "ddim_uniform":
        ss = max(len(sig) // steps, 1)
        picks = [float(sig[x]) for x in range(1, len(sig), ss)][::-1]
        return torch.tensor(picks + [0.0])
    if schedule == "beta":
        from scipy import stats

        total = len(sig) - 1
        ts = np.rint(stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), 0.6, 0.6) * total)
        out, last = [], -1
        for t in ts:
            if t != last:
                out.append(float(sig[int(t)]))
            last = t
        return torch.tensor(out + [0.0])
    raise ValueError(f"unknown scheduler {schedule!r}; choose one of {', '.join(SCHEDULE_NAMES)}")


def kdiffusion_sigmas(ms: ModelSampling, sampler: str, schedule: str, steps: int) -> torch.Tensor:
    """``comfy_sigmas`` as ComfyUI's KSampler uses them: one more step, then the penultimate sigma dropped,
    for the samplers that evaluate between sigmas (dpm_2, dpm_2_ancestral, uni_pc)."""
    if canonical(sampler) in DISCARD_PENULTIMATE:
        sigmas = comfy_sigmas(ms, schedule, steps + 1)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    return comfy_sigmas(ms, schedule, steps)
