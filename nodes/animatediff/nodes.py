"""AnimateDiff nodes: LoadMotionModule, ApplyAnimateDiff, context options, and ComfyUI-AnimateDiff-Evolved's names.

Frames are the latent batch: EmptyLatentImage(batch_size=16) -> KSampler -> VAEDecode makes a 16-frame clip once
the MODEL carries a motion module. ApplyAnimateDiff never changes the model: it returns
``model.with_patch(MotionPatch(...))`` (installed by KSampler for one run, patch.py) and, as AnimateDiff was trained
with it, the noise schedule AnimateDiff uses (``beta_schedule``): linear betas 0.00085..0.012 ("sqrt_linear" in
the original LDM naming, diffusers' ``linear``), plus the timestep spacing of diffusers' AnimateDiff example.

Evolved's nodes (same class names, input names and order, outputs) are thin adapters over the same code:
ADE_AnimateDiffLoaderGen1, ADE_LoadAnimateDiffModel, ADE_ApplyAnimateDiffModelSimple, ADE_ApplyAnimateDiffModel,
ADE_UseEvolvedSampling, ADE_StandardUniformContextOptions, ADE_LoopedUniformContextOptions and the legacy
ADE_AnimateDiffUniformContextOptions. Inputs they have that ipgraph does not implement (motion LoRA, keyframes,
per-block, sample settings, effect multival, view options) are left out; ``scale_multival`` takes a FLOAT.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ipgraph.engine import NodeContext, NodeInputs, NodeOutputs, Output, Socket, node

from ..core.types import ModelHandle
from ..core.widgets import ModelName, model_file_check, model_file_fingerprint, runtime_of
from .context import ContextOptions
from .motion import (
    MotionModule,
    MotionModuleError,
    check_fits_unet,
    inspect_motion_module,
    load_motion_module,
)
from .patch import MotionPatch

KIND = "animatediff_models"
CATEGORY_GEN1 = "Animate Diff 🎭🅐🅓/① Gen1 nodes ①"
CATEGORY_GEN2 = "Animate Diff 🎭🅐🅓/② Gen2 nodes ②"
CATEGORY_CONTEXT = "Animate Diff 🎭🅐🅓/context opts"

BetaSchedule = Literal["autoselect", "use existing", "sqrt_linear (AnimateDiff)", "linear (AnimateDiff-SDXL)",
                       "linear (HotshotXL/default)"]
# Evolved's names -> diffusers scheduler config (ComfyUI's "linear" is diffusers' scaled_linear; its
# "sqrt_linear" is diffusers' linear). AnimateDiff-SDXL: scaled_linear with beta_end 0.020.
_BETAS = {
    "sqrt_linear (AnimateDiff)": {"beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012},
    "linear (AnimateDiff-SDXL)": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.020},
    "linear (HotshotXL/default)": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
}
TimestepSpacing = Literal["linspace", "leading", "trailing", "use existing"]
FuseMethod = Literal["pyramid", "flat", "overlap-linear"]


def scheduler_for(model: ModelHandle, module: MotionModule, beta_schedule: str, spacing: str) -> dict:
    """The handle's scheduler config with AnimateDiff's noise schedule (``autoselect``: by the module's arch)."""
    if beta_schedule == "autoselect":
        beta_schedule = "linear (AnimateDiff-SDXL)" if module.info.arch == "sdxl" else "sqrt_linear (AnimateDiff)"
    config = dict(model.scheduler_config)
    config.update(_BETAS.get(beta_schedule, {}))
    if spacing != "use existing":
        config.update(timestep_spacing=spacing, steps_offset=1, clip_sample=False)
    return config


def animate(model: ModelHandle, module: MotionModule, *, input_name: str, scale: float = 1.0,
            start_at: float = 0.0, end_at: float = 1.0, context: ContextOptions | None = None,
            beta_schedule: str = "autoselect", spacing: str = "use existing") -> ModelHandle:
    """The one implementation behind every AnimateDiff node: a new handle carrying the motion patch."""
    if not isinstance(module, MotionModule):
        raise ValueError(f"input {input_name}: expected a motion module (LoadMotionModule), got "
                         f"{type(module).__name__}")
    problem = check_fits_unet(module.info, model.unet)
    if problem:
        raise ValueError(f"input {input_name}: {Path(module.info.path).name} does not fit the model "
                         f"{Path(model.source).name}: {problem}")
    if any(isinstance(p, MotionPatch) for p in model.patches):
        raise ValueError("input model: this model already carries a motion module; apply only one")
    if start_at > end_at:
        raise ValueError(f"start ({start_at}) is after end ({end_at})")
    if context is not None and context.context_length > module.info.max_frames:
        raise ValueError(f"input context_options: context_length is {context.context_length} but "
                         f"{Path(module.info.path).name} handles at most {module.info.max_frames} frames at once")
    patched = model.with_patch(MotionPatch(module, scale, start_at, end_at, context))
    return replace(patched, scheduler_config=scheduler_for(model, module, beta_schedule, spacing))


def _inspect(path: Path):
    try:
        inspect_motion_module(path)
    except MotionModuleError as exc:
        yield str(exc)


def _load(ctx: NodeContext, name: str) -> MotionModule:
    runtime = runtime_of(ctx)
    path = runtime.model_path(KIND, name)
    return runtime.models.load(("motion_module", str(path)), lambda: load_motion_module(path, runtime.dtype),
                               path=path)


# -- ipgraph's own nodes -------------------------------------------------------------------------------

class LoadMotionModuleIn(NodeInputs):
    name: str = ModelName(KIND, "motion module in models/animatediff_models: mm_sd_v15_v2.ckpt (read "
                                "weights-only), a .safetensors conversion, or a diffusers MotionAdapter folder")


class LoadMotionModuleOut(NodeOutputs):
    motion_model: Any = Output("MOTION_MODEL_ADE")


@node("LoadMotionModule", category="animatediff", check=model_file_check(KIND, _inspect),
      fingerprint=model_file_fingerprint(KIND))
def load_motion_module_node(inp: LoadMotionModuleIn, ctx: NodeContext) -> LoadMotionModuleOut:
    """Load an AnimateDiff motion module (v1/v2/v3, SDXL beta; read from the weights)."""
    return LoadMotionModuleOut(motion_model=_load(ctx, inp.name))


class ApplyAnimateDiffIn(NodeInputs):
    model: Any = Socket("MODEL")
    motion_model: Any = Socket("MOTION_MODEL_ADE")
    context_options: Any = Socket("CONTEXT_OPTIONS", optional=True,
                                  description="windows of frames for clips longer than the motion module")
    scale: float = Field(1.0, ge=0.0, le=10.0, description="how much motion: multiplies what the module adds")
    start_at: float = Field(0.0, ge=0.0, le=1.0, description="fraction of the steps before the module acts")
    end_at: float = Field(1.0, ge=0.0, le=1.0, description="fraction of the steps after which it stops")
    beta_schedule: BetaSchedule = Field("autoselect", description="noise schedule (autoselect: AnimateDiff's)")
    timestep_spacing: TimestepSpacing = Field("linspace", description="diffusers' timestep_spacing for the "
                                                                       "sampler (AnimateDiff examples: linspace)")


class ModelOut(NodeOutputs):
    model: Any = Output("MODEL")


def _range_check(literals: dict, runtime):
    if literals.get("start_at", 0.0) > literals.get("end_at", 1.0):
        yield "start_at", f"start_at ({literals['start_at']}) is after end_at ({literals['end_at']})"


@node("ApplyAnimateDiff", category="animatediff", check=_range_check)
def apply_animatediff(inp: ApplyAnimateDiffIn, ctx: NodeContext) -> ModelOut:
    """Make the model denoise the latent batch as one clip (frames = batch) with the motion module."""
    return ModelOut(model=animate(inp.model, inp.motion_model, input_name="motion_model", scale=inp.scale,
                                  start_at=inp.start_at, end_at=inp.end_at, context=inp.context_options,
                                  beta_schedule=inp.beta_schedule, spacing=inp.timestep_spacing))


# -- ComfyUI-AnimateDiff-Evolved's names --------------------------------------------------------------

class MultivalIn(NodeInputs):
    float_val: float = Field(1.0, ge=0.0)


class MultivalOut(NodeOutputs):
    MULTIVAL: Any = Output("MULTIVAL")


@node("ADE_MultivalDynamic", category="Animate Diff 🎭🅐🅓/multival", display_name="Multival 🎭🅐🅓")
def ade_multival(inp: MultivalIn, ctx: NodeContext) -> MultivalOut:
    """A scale for scale_multival (Evolved also takes a mask here; ipgraph takes the number only)."""
    return MultivalOut(MULTIVAL=float(inp.float_val))


def _scale(value) -> float:
    if value is None:
        return 1.0
    if not isinstance(value, (int, float)):
        raise ValueError(f"input scale_multival: expected a number (ADE_MultivalDynamic), got {type(value).__name__}")
    return float(value)


class Gen1In(NodeInputs):
    model: Any = Socket("MODEL")
    model_name: str = ModelName(KIND, "motion module in models/animatediff_models")
    beta_schedule: BetaSchedule = "autoselect"
    context_options: Any = Socket("CONTEXT_OPTIONS", optional=True)
    scale_multival: Any = Socket("MULTIVAL", optional=True, description="motion scale (ADE_MultivalDynamic)")


class ComfyModelOut(NodeOutputs):
    MODEL: Any = Output("MODEL")


@node("ADE_AnimateDiffLoaderGen1", category=CATEGORY_GEN1, display_name="AnimateDiff Loader 🎭🅐🅓①",
      check=model_file_check(KIND, _inspect, field="model_name"), fingerprint=model_file_fingerprint(KIND, "model_name"))
def ade_loader_gen1(inp: Gen1In, ctx: NodeContext) -> ComfyModelOut:
    """Load a motion module and apply it to the model in one node (Evolved's Gen1 loader)."""
    module = _load(ctx, inp.model_name)
    scale = _scale(inp.scale_multival)
    return ComfyModelOut(MODEL=animate(inp.model, module, input_name="model_name", scale=scale,
                                       context=inp.context_options, beta_schedule=inp.beta_schedule))


class LoadADModelIn(NodeInputs):
    model_name: str = ModelName(KIND, "motion module in models/animatediff_models")


class LoadADModelOut(NodeOutputs):
    MOTION_MODEL: Any = Output("MOTION_MODEL_ADE")


@node("ADE_LoadAnimateDiffModel", category=CATEGORY_GEN2, display_name="Load AnimateDiff Model 🎭🅐🅓②",
      check=model_file_check(KIND, _inspect, field="model_name"), fingerprint=model_file_fingerprint(KIND, "model_name"))
def ade_load_model(inp: LoadADModelIn, ctx: NodeContext) -> LoadADModelOut:
    """Load a motion module (Evolved's Gen2 loader)."""
    return LoadADModelOut(MOTION_MODEL=_load(ctx, inp.model_name))


@dataclass(frozen=True, eq=False)
class MotionModels:
    """Evolved's M_MODELS: the motion module applications waiting for ADE_UseEvolvedSampling."""

    entries: tuple  # ((MotionModule, scale, start, end), ...)

    def cache_nbytes(self) -> int:
        return 0


class ApplyADSimpleIn(NodeInputs):
    motion_model: Any = Socket("MOTION_MODEL_ADE")
    scale_multival: Any = Socket("MULTIVAL", optional=True, description="motion scale (ADE_MultivalDynamic)")


class MModelsOut(NodeOutputs):
    M_MODELS: Any = Output("M_MODELS")


@node("ADE_ApplyAnimateDiffModelSimple", category=CATEGORY_GEN2, display_name="Apply AnimateDiff Model 🎭🅐🅓②")
def ade_apply_simple(inp: ApplyADSimpleIn, ctx: NodeContext) -> MModelsOut:
    """Describe one motion module application over the whole schedule."""
    return MModelsOut(M_MODELS=MotionModels(((inp.motion_model, _scale(inp.scale_multival), 0.0, 1.0),)))


class ApplyADIn(NodeInputs):
    motion_model: Any = Socket("MOTION_MODEL_ADE")
    start_percent: float = Field(0.0, ge=0.0, le=1.0)
    end_percent: float = Field(1.0, ge=0.0, le=1.0)
    scale_multival: Any = Socket("MULTIVAL", optional=True, description="motion scale (ADE_MultivalDynamic)")
    prev_m_models: Any = Socket("M_MODELS", optional=True)


@node("ADE_ApplyAnimateDiffModel", category=CATEGORY_GEN2, display_name="Apply AnimateDiff Model (Adv.) 🎭🅐🅓②")
def ade_apply(inp: ApplyADIn, ctx: NodeContext) -> MModelsOut:
    """Describe one motion module application over [start_percent, end_percent]."""
    prev = inp.prev_m_models.entries if inp.prev_m_models is not None else ()
    entry = (inp.motion_model, _scale(inp.scale_multival), inp.start_percent, inp.end_percent)
    return MModelsOut(M_MODELS=MotionModels(prev + (entry,)))


class UseEvolvedIn(NodeInputs):
    model: Any = Socket("MODEL")
    beta_schedule: BetaSchedule = "autoselect"
    m_models: Any = Socket("M_MODELS", optional=True)
    context_options: Any = Socket("CONTEXT_OPTIONS", optional=True)


@node("ADE_UseEvolvedSampling", category=CATEGORY_GEN2, display_name="Use Evolved Sampling 🎭🅐🅓②")
def ade_use_evolved(inp: UseEvolvedIn, ctx: NodeContext) -> ComfyModelOut:
    """Put the described motion module on the model for sampling."""
    if inp.m_models is None:
        raise ValueError("input m_models: connect an Apply AnimateDiff Model node (ipgraph samples without a "
                         "motion module only through plain KSampler)")
    if len(inp.m_models.entries) != 1:
        raise ValueError(f"input m_models: {len(inp.m_models.entries)} motion modules were chained; ipgraph applies "
                         "one at a time")
    module, scale, start, end = inp.m_models.entries[0]
    return ComfyModelOut(MODEL=animate(inp.model, module, input_name="m_models", scale=scale, start_at=start,
                                       end_at=end, context=inp.context_options, beta_schedule=inp.beta_schedule))


# -- context options ---------------------------------------------------------------------------------

class StandardUniformIn(NodeInputs):
    context_length: int = Field(16, ge=1, le=128)
    context_stride: int = Field(1, ge=1, le=32)
    context_overlap: int = Field(4, ge=0, le=128)
    fuse_method: FuseMethod = "pyramid"
    use_on_equal_length: bool = False
    start_percent: float = Field(0.0, ge=0.0, le=1.0, description="fraction of the steps before windows are used")
    guarantee_steps: int = Field(1, ge=0, description="only matters when several context options are chained "
                                                      "(prev_context), which ipgraph does not offer")


class ContextOut(NodeOutputs):
    CONTEXT_OPTS: Any = Output("CONTEXT_OPTIONS")


def _context_check(literals: dict, runtime):
    if literals.get("context_overlap", 4) >= literals.get("context_length", 16):
        yield "context_overlap", (f"context_overlap ({literals['context_overlap']}) must be smaller than "
                                  f"context_length ({literals['context_length']})")


@node("ADE_StandardUniformContextOptions", category=CATEGORY_CONTEXT, check=_context_check,
      display_name="Context Options◆Standard Uniform 🎭🅐🅓")
def ade_standard_uniform(inp: StandardUniformIn, ctx: NodeContext) -> ContextOut:
    """Sliding windows of frames with overlap, never wrapping round (context.py)."""
    return ContextOut(CONTEXT_OPTS=ContextOptions(inp.context_length, inp.context_stride, inp.context_overlap,
                                                  "standard_uniform", False, inp.fuse_method,
                                                  inp.use_on_equal_length, inp.start_percent))


class LoopedUniformIn(NodeInputs):
    context_length: int = Field(16, ge=1, le=128)
    context_stride: int = Field(1, ge=1, le=32)
    context_overlap: int = Field(4, ge=0, le=128)
    closed_loop: bool = False
    fuse_method: FuseMethod = "pyramid"
    use_on_equal_length: bool = False
    start_percent: float = Field(0.0, ge=0.0, le=1.0)
    guarantee_steps: int = Field(1, ge=0, description="only matters when context options are chained")


@node("ADE_LoopedUniformContextOptions", category=CATEGORY_CONTEXT, check=_context_check,
      display_name="Context Options◆Looped Uniform 🎭🅐🅓")
def ade_looped_uniform(inp: LoopedUniformIn, ctx: NodeContext) -> ContextOut:
    """Sliding windows of frames that wrap round to the first frames (loops)."""
    return ContextOut(CONTEXT_OPTS=ContextOptions(inp.context_length, inp.context_stride, inp.context_overlap,
                                                  "looped_uniform", inp.closed_loop, inp.fuse_method,
                                                  inp.use_on_equal_length, inp.start_percent))


class LegacyUniformIn(NodeInputs):
    context_length: int = Field(16, ge=1, le=128)
    context_stride: int = Field(1, ge=1, le=32)
    context_overlap: int = Field(4, ge=0, le=128)
    context_schedule: Literal["uniform"] = "uniform"
    closed_loop: bool = False
    fuse_method: FuseMethod = "flat"
    use_on_equal_length: bool = False
    start_percent: float = Field(0.0, ge=0.0, le=1.0)
    guarantee_steps: int = Field(1, ge=0, description="only matters when context options are chained")


@node("ADE_AnimateDiffUniformContextOptions", category=CATEGORY_CONTEXT, check=_context_check,
      display_name="Context Options◆Looped Uniform 🎭🅐🅓")
def ade_legacy_uniform(inp: LegacyUniformIn, ctx: NodeContext) -> ContextOut:
    """The legacy uniform context options (looped windows, flat fuse by default)."""
    return ContextOut(CONTEXT_OPTS=ContextOptions(inp.context_length, inp.context_stride, inp.context_overlap,
                                                  "looped_uniform", inp.closed_loop, inp.fuse_method,
                                                  inp.use_on_equal_length, inp.start_percent))


# -- per-frame weights ---------------------------------------------------------------------------------

class FrameWeightsIn(NodeInputs):
    frames: int = Field(16, ge=1, le=4096, description="number of frames (the latent batch size)")
    method: Literal["ramp", "list"] = Field("ramp", description="ramp: start -> end linearly over the frames; "
                                                                "list: the weights given")
    start: float = Field(1.0, ge=-1.0, le=5.0, description="ramp: weight of the first frame")
    end: float = Field(0.0, ge=-1.0, le=5.0, description="ramp: weight of the last frame")
    weights: str = Field("", description="list: comma-separated weights, one per frame (the last repeats)")


class FrameWeightsOut(NodeOutputs):
    mask: Any = Output("MASK", description="[frames, 1, 1]: connect to IPAdapterApply's attn_mask")


def _frame_weights_check(literals: dict, runtime):
    if literals.get("method") == "list":
        try:
            values = [float(v) for v in literals.get("weights", "").split(",") if v.strip()]
        except ValueError:
            yield "weights", f"weights must be numbers separated by commas, not {literals.get('weights')!r}"
            return
        if not values:
            yield "weights", "method list needs weights, e.g. 1.0, 0.8, 0.6"


@node("IPAdapterFrameWeights", category="animatediff", check=_frame_weights_check)
def frame_weights(inp: FrameWeightsIn, ctx: NodeContext) -> FrameWeightsOut:
    """A weight per video frame for an IP-Adapter, as a MASK batch of 1x1 masks (frame i scales the image
    attention of frame i; IPAdapterApply multiplies its weight by it), e.g. two references cross-fading."""
    import torch

    if inp.method == "ramp":
        values = torch.linspace(inp.start, inp.end, inp.frames) if inp.frames > 1 else torch.tensor([inp.start])
    else:
        given = [float(v) for v in inp.weights.split(",") if v.strip()]
        values = torch.tensor((given + [given[-1]] * inp.frames)[:inp.frames])
    return FrameWeightsOut(mask=values.float().reshape(-1, 1, 1))
