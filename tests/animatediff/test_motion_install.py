"""The motion module installed by hooks equals diffusers' UNetMotionModel.from_unet2d, and leaves the UNet as it was."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNetMotionModel

from ipgraph.nodes.animatediff.motion import load_motion_module
from ipgraph.nodes.animatediff.patch import MotionPatch, installed
from ipgraph.nodes.core.types import SamplingState
from ipgraph.nodes.models.single_file import load_checkpoint

FRAMES = 4


def _inputs(size, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * FRAMES, 4, size, size, generator=g).to(dtype)
    text = torch.randn(2, 77, 32, generator=g).repeat_interleave(FRAMES, 0).to(dtype)
    return x, text


@pytest.mark.parametrize("motion,dtype,size,tol", [
    ("tiny-mm-sd15-v2.ckpt", torch.float64, 8, 1e-10),  # v2: mid-block motion module; exact in float64
    ("tiny-mm-sd15-v3.safetensors", torch.float32, 16, 1e-5),
])
def test_hooks_equal_unet_motion_model(models_dir, motion, dtype, size, tol):
    ckpt = models_dir / "checkpoints" / "tiny-sd15.safetensors"
    module = load_motion_module(models_dir / "animatediff_models" / motion, dtype)
    unet = load_checkpoint(ckpt, dtype=dtype).unet
    reference = UNetMotionModel.from_unet2d(load_checkpoint(ckpt, dtype=dtype).unet, module.adapter).to(dtype)
    x, text = _inputs(size, dtype)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    plain = unet(x, 500, encoder_hidden_states=text).sample
    with installed(unet, [MotionPatch(module)], SamplingState(batch_size=FRAMES)):
        ours = unet(x, 500, encoder_hidden_states=text).sample
    video = x.view(2, FRAMES, 4, size, size).permute(0, 2, 1, 3, 4)
    want = reference(video, 500, encoder_hidden_states=text).sample.permute(0, 2, 1, 3, 4).reshape(x.shape)
    assert (ours - want).abs().max().item() <= tol
    assert (ours - plain).abs().max().item() > 1e-2  # the motion module really acts
    assert torch.equal(unet(x, 500, encoder_hidden_states=text).sample, plain)  # A-B-A
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
    assert not unet._forward_hooks and all(not m._forward_hooks for m in unet.modules())


def test_scale_zero_and_inactive_range_are_the_plain_unet(models_dir):
    module = load_motion_module(models_dir / "animatediff_models" / "tiny-mm-sd15-v2.ckpt")
    unet = load_checkpoint(models_dir / "checkpoints" / "tiny-sd15.safetensors").unet
    x, text = _inputs(8, torch.float32)
    plain = unet(x, 500, encoder_hidden_states=text).sample
    for patch in (MotionPatch(module, scale=0.0), MotionPatch(module, start_at=0.5, end_at=1.0)):
        with installed(unet, [patch], SamplingState(step=0, total_steps=4, batch_size=FRAMES)):
            assert torch.equal(unet(x, 500, encoder_hidden_states=text).sample, plain)
    with installed(unet, [MotionPatch(module, scale=0.5)], SamplingState(batch_size=FRAMES)):
        half = unet(x, 500, encoder_hidden_states=text).sample
    with installed(unet, [MotionPatch(module)], SamplingState(batch_size=FRAMES)):
        full = unet(x, 500, encoder_hidden_states=text).sample
    assert 1e-3 < (half - plain).abs().max() < (full - plain).abs().max() * 1.5
