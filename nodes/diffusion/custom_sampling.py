"""ComfyUI's custom-sampling family (comfy_extras/nodes_custom_sampler.py) and ModelSamplingDiscrete.

The pieces KSampler bundles, as separate values: SAMPLER (a sampler name), SIGMAS (a noise schedule), NOISE
(a seed), GUIDER (model + conditionings + cfg). SamplerCustom(Advanced) runs them through the same loop as
KSampler (``sampling.run_sampling``).

SIGMAS made by BasicScheduler remember the named schedule they come from (``plan``): a sampler that diffusers
implements for that schedule then runs diffusers' scheduler, exactly as KSampler does with the same names.
Every other SIGMAS (KarrasScheduler, SDTurboScheduler, or a sampler diffusers lacks) runs ComfyUI's
k-diffusion algorithm on the sigma values themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..core.types import Conditioning, Latent, ModelHandle
from ..core.widgets import runtime_of
from .samplers import SamplerName, ScheduleName, comfy_sigmas, karras_sigmas
from .sampling import (
    Cfg,
    ModelSamplingPatch,
    Plan,
    Seed,
    check_latent_fits_model,
    model_sampling_of,
    sample_node,
    uses_diffusers,
)


@dataclass(frozen=True)
class SamplerChoice:
    """SAMPLER: one of ComfyUI's sampler names."""

    name: str


@dataclass(frozen=True, eq=False)
class Sigmas:
    """SIGMAS: descending noise levels ``[n + 1]`` (n steps, usually ending at 0) and, when they are an
    unedited named schedule, the plan diffusers can reproduce them from."""

    values: torch.Tensor
    plan: Plan | None = None


@dataclass(frozen=True)
class Noise:
    """NOISE: the seed of the initial noise (None: no noise added; the seed then still drives ancestral
    samplers, as ComfyUI's)."""

    seed: int
    add: bool = True


@dataclass(frozen=True, eq=False)
class Guider:
    """GUIDER: what the sampler denoises with (``negative`` None: BasicGuider, no classifier-free guidance)."""

    model: ModelHandle
    positive: Conditioning
    negative: Conditioning | None
    cfg: float


def _sample_custom(ctx, guider: Guider, sampler: SamplerChoice, sigmas: Sigmas, latent: Latent, noise: Noise):
    check_latent_fits_model(latent, guider.model)
    if len(sigmas.values) < 2:
        return SamplerOut(output=latent, denoised_output=latent)
    plan = sigmas.plan if sigmas.plan is not None and uses_diffusers(guider.model, sampler.name, sigmas.plan) \
        else sigmas.values
    result = sample_node(ctx, guider.model, guider.positive, guider.negative, latent, cfg=guider.cfg,
                         sampler=sampler.name, plan=plan, seed=noise.seed, add_noise=noise.add,
                         runtime=runtime_of(ctx))
    return SamplerOut(output=latent.replace(samples=result.samples),
                      denoised_output=latent.replace(samples=result.denoised))


class SamplerOut(NodeOutputs):
    output: Any = Output("LATENT")
    denoised_output: Any = Output("LATENT", description="the last x0 prediction")


class SamplerCustomIn(NodeInputs):
    model: Any = Socket("MODEL")
    add_noise: bool = True
    noise_seed: int = Seed()
    cfg: float = Cfg()
    positive: Any = Socket("CONDITIONING")
    negative: Any = Socket("CONDITIONING")
    sampler: Any = Socket("SAMPLER")
    sigmas: Any = Socket("SIGMAS")
    latent_image: Any = Socket("LATENT")


@node("SamplerCustom", category="sampling/custom_sampling", display_name="SamplerCustom")
def sampler_custom(inp: SamplerCustomIn, ctx: NodeContext) -> SamplerOut:
    """Sample with an explicit sampler and sigmas (KSampler in parts)."""
    guider = Guider(inp.model, inp.positive, inp.negative, inp.cfg)
    return _sample_custom(ctx, guider, inp.sampler, inp.sigmas, inp.latent_image,
                          Noise(inp.noise_seed, inp.add_noise))


class SamplerCustomAdvancedIn(NodeInputs):
    noise: Any = Socket("NOISE")
    guider: Any = Socket("GUIDER")
    sampler: Any = Socket("SAMPLER")
    sigmas: Any = Socket("SIGMAS")
    latent_image: Any = Socket("LATENT")


@node("SamplerCustomAdvanced", category="sampling/custom_sampling", display_name="SamplerCustomAdvanced")
def sampler_custom_advanced(inp: SamplerCustomAdvancedIn, ctx: NodeContext) -> SamplerOut:
    """Sample with explicit noise, guider, sampler and sigmas."""
    return _sample_custom(ctx, inp.guider, inp.sampler, inp.sigmas, inp.latent_image, inp.noise)


class KSamplerSelectIn(NodeInputs):
    sampler_name: SamplerName = "euler"


class SamplerOutput(NodeOutputs):
    SAMPLER: Any = Output("SAMPLER")


@node("KSamplerSelect", category="sampling/custom_sampling/samplers", display_name="KSamplerSelect")
def ksampler_select(inp: KSamplerSelectIn, ctx: NodeContext) -> SamplerOutput:
    """Pick a sampler by name."""
    return SamplerOutput(SAMPLER=SamplerChoice(inp.sampler_name))


class SigmasOut(NodeOutputs):
    SIGMAS: Any = Output("SIGMAS")


class BasicSchedulerIn(NodeInputs):
    model: Any = Socket("MODEL")
    scheduler: ScheduleName = "simple"
    steps: int = Field(20, ge=1, le=10000)
    denoise: float = Field(1.0, ge=0.0, le=1.0, json_schema_extra={"step": 0.01})


@node("BasicScheduler", category="sampling/custom_sampling/schedulers", display_name="BasicScheduler")
def basic_scheduler(inp: BasicSchedulerIn, ctx: NodeContext) -> SigmasOut:
    """The model's sigmas for a named schedule; denoise < 1 keeps the last ``steps`` of an
    ``int(steps / denoise)``-step schedule (ComfyUI's)."""
    if inp.denoise <= 0:
        return SigmasOut(SIGMAS=Sigmas(torch.zeros(0)))
    total = inp.steps if inp.denoise >= 1.0 else int(inp.steps / inp.denoise)
    values = comfy_sigmas(model_sampling_of(inp.model), inp.scheduler, total)[-(inp.steps + 1):]
    return SigmasOut(SIGMAS=Sigmas(values, Plan(inp.scheduler, total, start=total - inp.steps)))


class KarrasSchedulerIn(NodeInputs):
    steps: int = Field(20, ge=1, le=10000)
    sigma_max: float = Field(14.614642, ge=0.0, le=5000.0, json_schema_extra={"step": 0.01, "round": False})
    sigma_min: float = Field(0.0291675, ge=0.0, le=5000.0, json_schema_extra={"step": 0.01, "round": False})
    rho: float = Field(7.0, ge=0.0, le=100.0, json_schema_extra={"step": 0.01, "round": False})


@node("KarrasScheduler", category="sampling/custom_sampling/schedulers", display_name="KarrasScheduler")
def karras_scheduler(inp: KarrasSchedulerIn, ctx: NodeContext) -> SigmasOut:
    """Karras et al.'s schedule between explicit sigma_max and sigma_min."""
    if inp.sigma_min <= 0 or inp.sigma_max <= inp.sigma_min:
        raise ValueError("sigma_min: needs 0 < sigma_min < sigma_max")
    return SigmasOut(SIGMAS=Sigmas(karras_sigmas(inp.steps, inp.sigma_min, inp.sigma_max, inp.rho)))


class SDTurboSchedulerIn(NodeInputs):
    model: Any = Socket("MODEL")
    steps: int = Field(1, ge=1, le=10)
    denoise: float = Field(1.0, ge=0.0, le=1.0, json_schema_extra={"step": 0.01})


@node("SDTurboScheduler", category="sampling/custom_sampling/schedulers", display_name="SDTurboScheduler")
def sd_turbo_scheduler(inp: SDTurboSchedulerIn, ctx: NodeContext) -> SigmasOut:
    """SD-Turbo's schedule: timesteps 999, 899, ..., 99 (from ``10 - int(10 * denoise)``), then 0."""
    ms = model_sampling_of(inp.model)
    start = 10 - int(10 * inp.denoise)
    timesteps = [999 - 100 * i for i in range(10)][start:start + inp.steps]
    return SigmasOut(SIGMAS=Sigmas(torch.tensor([ms.sigma(t) for t in timesteps] + [0.0])))


class RandomNoiseIn(NodeInputs):
    noise_seed: int = Seed()


class NoiseOut(NodeOutputs):
    NOISE: Any = Output("NOISE")


@node("RandomNoise", category="sampling/custom_sampling/noise", display_name="RandomNoise")
def random_noise(inp: RandomNoiseIn, ctx: NodeContext) -> NoiseOut:
    """Gaussian initial noise from a seed (``torch.randn`` of the latent's shape on a CPU generator)."""
    return NoiseOut(NOISE=Noise(inp.noise_seed))


class GuiderOut(NodeOutputs):
    GUIDER: Any = Output("GUIDER")


class BasicGuiderIn(NodeInputs):
    model: Any = Socket("MODEL")
    conditioning: Any = Socket("CONDITIONING")


@node("BasicGuider", category="sampling/custom_sampling/guiders", display_name="BasicGuider")
def basic_guider(inp: BasicGuiderIn, ctx: NodeContext) -> GuiderOut:
    """The model on one conditioning, no classifier-free guidance."""
    return GuiderOut(GUIDER=Guider(inp.model, inp.conditioning, None, 1.0))


class CFGGuiderIn(NodeInputs):
    model: Any = Socket("MODEL")
    positive: Any = Socket("CONDITIONING")
    negative: Any = Socket("CONDITIONING")
    cfg: float = Cfg()


@node("CFGGuider", category="sampling/custom_sampling/guiders", display_name="CFGGuider")
def cfg_guider(inp: CFGGuiderIn, ctx: NodeContext) -> GuiderOut:
    """Classifier-free guidance: ``uncond + cfg * (cond - uncond)``."""
    return GuiderOut(GUIDER=Guider(inp.model, inp.positive, inp.negative, inp.cfg))


class ModelSamplingDiscreteIn(NodeInputs):
    model: Any = Socket("MODEL")
    sampling: Literal["eps", "v_prediction", "lcm", "x0"] = "eps"
    zsnr: bool = False


class ModelOut(NodeOutputs):
    MODEL: Any = Output("MODEL")


@node("ModelSamplingDiscrete", category="advanced/model", display_name="ModelSamplingDiscrete")
def model_sampling_discrete(inp: ModelSamplingDiscreteIn, ctx: NodeContext) -> ModelOut:
    """Say what the UNet predicts: eps, v (v_prediction), eps with LCM's boundary condition (lcm), or x0;
    zsnr rescales the noise schedule to zero terminal SNR. A patch on the handle; the UNet is unchanged."""
    return ModelOut(MODEL=inp.model.with_patch(ModelSamplingPatch(inp.sampling, inp.zsnr)))
