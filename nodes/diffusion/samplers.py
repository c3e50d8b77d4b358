"""Sampler and schedule names (ComfyUI's) mapped onto diffusers schedulers.

| sampler          | diffusers scheduler                                             |
|------------------|-----------------------------------------------------------------|
| euler            | EulerDiscreteScheduler                                          |
| euler_ancestral  | EulerAncestralDiscreteScheduler                                 |
| heun             | HeunDiscreteScheduler                                           |
| dpmpp_2m         | DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", order 2) |
| dpmpp_2m_sde     | DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", order 2) |
| ddim             | DDIMScheduler                                                   |
| uni_pc           | UniPCMultistepScheduler                                         |
| lms              | LMSDiscreteScheduler                                            |
| pndm             | PNDMScheduler (the SD1.5 checkpoints' own default)              |

| schedule | meaning                                                                  |
|----------|--------------------------------------------------------------------------|
| normal   | the checkpoint's own timestep spacing (its scheduler config)             |
| karras   | ``use_karras_sigmas=True`` (euler, heun, dpmpp_*, uni_pc, lms only)       |

Every scheduler is built ``from_config`` of the checkpoint's scheduler config, so betas and spacing are the
model's own, exactly as a diffusers pipeline built with ``Scheduler.from_config(pipe.scheduler.config)``.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Literal

import diffusers

SAMPLERS: dict[str, tuple[str, dict]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "ddim": ("DDIMScheduler", {}),
    "uni_pc": ("UniPCMultistepScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
}
SamplerName = Literal["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "ddim", "uni_pc", "lms", "pndm"]
ScheduleName = Literal["normal", "karras"]


@cache
def supports_karras(sampler: str) -> bool:
    """Whether the diffusers scheduler has a ``use_karras_sigmas`` option (read from its default config)."""
    cls = getattr(diffusers, SAMPLERS[sampler][0])
    return "use_karras_sigmas" in cls.from_config({}).config


def make_scheduler(sampler: str, schedule: str, config: dict):
    """A fresh scheduler (schedulers are stateful: one per sampling call)."""
    class_name, overrides = SAMPLERS[sampler]
    overrides = dict(overrides)
    if schedule == "karras":
        if not supports_karras(sampler):
            raise ValueError(f"the {sampler} sampler has no karras schedule; use schedule 'normal'")
        overrides["use_karras_sigmas"] = True
    return getattr(diffusers, class_name).from_config(config, **overrides)


def step_kwargs(scheduler, generator, eta: float = 0.0) -> dict:
    """What diffusers pipelines pass to ``scheduler.step`` (generator for stochastic samplers, eta for DDIM)."""
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs
