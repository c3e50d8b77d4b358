"""A motion module on a MODEL handle (``MotionPatch``) and installing it on the shared UNet for one sampling run.

Frames travel as the latent batch (ComfyUI's convention): a batch of F latents is one clip of F frames, and the
UNet batch under classifier-free guidance is ``[uncond × F, cond × F]``, exactly the ``[B·F, C, h, w]`` layout
diffusers' ``UNetMotionModel`` reshapes its video into.

Install = forward hooks, removed on exit (A-B-A bit-identical): diffusers' motion blocks run
``resnet -> attention -> motion module`` (``resnet -> motion module`` in blocks without attention, and
``attention -> motion module -> resnet`` in the v2 mid block), so a hook on each attention (or resnet) output that
applies the matching ``AnimateDiffTransformer3D`` reproduces ``UNetMotionModel.from_unet2d(unet, adapter)`` without
copying or changing the UNet. Time and text embeddings need no change: the sampler already gives every frame its
own row, which is what ``UNetMotionModel`` builds with ``repeat_interleave``.

``scale`` multiplies what the motion module adds: ``h + scale·(M(h) - h)`` (1 = the module as trained, 0 = none);
``[start_at, end_at]`` is the fraction of the schedule where it acts (diffusers' control-guidance rule). With
context options the UNet forward is wrapped to run per window of frames (context.py) and fuse the predictions.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.patches import patch_installer
from .context import ContextOptions, context_windows, fuse_weights
from .motion import MotionModule, check_fits_unet


class MotionPatchError(ValueError):
    """A motion module that cannot run on this model or clip; the message is a plain sentence."""


@dataclass(frozen=True, eq=False)
class MotionPatch:
    module: MotionModule
    scale: float = 1.0
    start_at: float = 0.0
    end_at: float = 1.0
    context: ContextOptions | None = None

    def cache_nbytes(self) -> int:
        return 0


def hook_points(unet, adapter) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """(UNet submodule whose output feeds a motion module, that motion module), in UNetMotionModel's order."""
    points = []

    def blocks(unet_blocks, adapter_blocks):
        for block, motion in zip(unet_blocks, adapter_blocks, strict=True):
            anchors = block.attentions if getattr(block, "attentions", None) is not None else block.resnets
            if len(anchors) != len(motion.motion_modules):
                raise MotionPatchError(f"a UNet block has {len(anchors)} layers but its motion module has "
                                       f"{len(motion.motion_modules)}: the module was made for a different UNet.")
            points.extend(zip(anchors, motion.motion_modules, strict=True))

    blocks(unet.down_blocks, adapter.down_blocks)
    if adapter.mid_block is not None:
        if len(unet.mid_block.attentions) != len(adapter.mid_block.motion_modules):
            raise MotionPatchError("the UNet's mid block does not match the motion module's: it was made for a "
                                   "different UNet.")
        points.extend(zip(unet.mid_block.attentions, adapter.mid_block.motion_modules, strict=True))
    blocks(unet.up_blocks, adapter.up_blocks)
    return points


def _slice_batch(value, rows: torch.Tensor, full: int):
    """Rows of a tensor (or of the tensors in a tuple/dict) whose first dimension is the UNet batch."""
    if isinstance(value, torch.Tensor):
        return value[rows] if value.ndim > 0 and value.shape[0] == full else value
    if isinstance(value, (tuple, list)):
        return type(value)(_slice_batch(v, rows, full) for v in value)
    if isinstance(value, dict):
        return {k: _slice_batch(v, rows, full) for k, v in value.items()}
    return value


@patch_installer(MotionPatch)
@contextmanager
def installed(unet, patches, state):
    """Hook the motion module into ``unet`` for one sampling run; with context options, also run per window."""
    if len(patches) > 1:
        raise MotionPatchError("the model carries two motion modules; apply only one AnimateDiff model.")
    patch: MotionPatch = patches[0]
    info = patch.module.info
    problem = check_fits_unet(info, unet)
    if problem:
        raise MotionPatchError(problem)
    frames = state.batch_size
    ctx = patch.context
    if ctx is not None and ctx.context_length > info.max_frames:
        raise MotionPatchError(f"the context options' context_length is {ctx.context_length} but the motion module "
                               f"{Path(info.path).name} handles at most {info.max_frames} frames at once; "
                               f"set context_length to {info.max_frames} or less.")
    if frames > info.max_frames and ctx is None:
        raise MotionPatchError(f"input latent_image: the latent batch has {frames} frames but the motion module "
                               f"{Path(info.path).name} handles "
                               f"at most {info.max_frames} at once; add context options (e.g. "
                               f"ADE_StandardUniformContextOptions) to the AnimateDiff node, or use fewer frames.")
    state.extra["motion_frames"] = frames
    adapter = patch.module.adapter

    def make_hook(motion):
        def hook(_module, _args, output):
            if not state.active(patch.start_at, patch.end_at) or patch.scale == 0.0:
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            out = motion(hidden, num_frames=state.extra.get("motion_frames", frames))
            if patch.scale != 1.0:
                out = hidden + patch.scale * (out - hidden)
            return (out, *output[1:]) if isinstance(output, tuple) else out

        return hook

    param = next(unet.parameters())
    adapter_device = next(adapter.parameters()).device
    if adapter_device != param.device:
        adapter.to(param.device)
    handles = [anchor.register_forward_hook(make_hook(motion)) for anchor, motion in hook_points(unet, adapter)]
    had_forward = "forward" in vars(unet)
    old_forward = vars(unet).get("forward")
    if ctx is not None:
        unet.forward = _windowed_forward(unet.forward, ctx, state, frames)
    try:
        yield unet
    finally:
        for h in handles:
            h.remove()
        if ctx is not None:
            if had_forward:
                unet.forward = old_forward
            else:
                del unet.forward
        state.extra.pop("motion_frames", None)
        state.extra.pop("frames", None)
        if adapter_device != param.device:
            adapter.to(adapter_device)


def _windowed_forward(forward, ctx: ContextOptions, state, frames: int):
    """UNet forward that denoises each context window separately and fuses the per-frame predictions."""

    def run(sample, timestep, encoder_hidden_states, *args, return_dict: bool = True, **kwargs):
        if not ctx.applies(frames, state.fraction_start):
            state.extra["motion_frames"] = frames
            return forward(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
        full = sample.shape[0]
        sides = full // frames
        out = torch.zeros_like(sample)
        counts = torch.zeros((full, 1, 1, 1), device=sample.device, dtype=sample.dtype)
        for window in context_windows(frames, ctx, state.step):
            idx = torch.tensor(window, device=sample.device)
            rows = torch.cat([idx + side * frames for side in range(sides)])
            state.extra["motion_frames"] = len(window)
            state.extra["frames"] = window
            pred = forward(sample[rows], _slice_batch(timestep, rows, full),
                           _slice_batch(encoder_hidden_states, rows, full),
                           *_slice_batch(args, rows, full), return_dict=False,
                           **_slice_batch(kwargs, rows, full))[0]
            w = fuse_weights(window, frames, ctx).to(device=sample.device, dtype=sample.dtype)
            w = w.repeat(sides)[:, None, None, None]
            out[rows] += pred * w
            counts[rows] += w
        state.extra.pop("frames", None)
        state.extra["motion_frames"] = frames
        result = out / counts
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=result)
        return (result,)

    return run
