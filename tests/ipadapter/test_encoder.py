"""CLIP preprocessing, encoding and negatives against transformers' CLIPImageProcessor and diffusers' encode_image."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from transformers import CLIPImageProcessor

from ipgraph.nodes.ipadapter import (
    combine_embeds,
    embeds_for,
    encode,
    load_ipadapter,
    preprocess,
    unconditional_embeds,
)


def _image(h, w, seed=0):
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return arr, torch.from_numpy(arr).float()[None] / 255.0


@pytest.mark.parametrize("hw", [(100, 150), (181, 97), (224, 224)])
def test_preprocess_matches_clip_image_processor(hw):
    arr, image = _image(*hw)
    ref = CLIPImageProcessor()(images=Image.fromarray(arr), return_tensors="pt").pixel_values
    ours = preprocess(image)
    assert ours.shape == (1, 3, 224, 224) and (ours - ref).abs().max() < 1e-5


def test_crop_modes():
    _, image = _image(60, 120)
    squash, pad = preprocess(image, crop="none"), preprocess(image, crop="pad")
    assert squash.shape == pad.shape == (1, 3, 224, 224)
    black = (0 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]
    )
    assert torch.allclose(pad[0, :, 0, 112], black, atol=1e-5)  # top band is padding


@pytest.mark.parametrize("variant", ["base", "plus"])
def test_embeds_and_negatives_match_diffusers_encode_image(variant, encoder, models_dir):
    _, paths = models_dir
    info = load_ipadapter(paths[f"{variant}_sd15"]).info
    arr, image = _image(90, 130, seed=3)
    fake_pipe = SimpleNamespace(feature_extractor=CLIPImageProcessor(), image_encoder=encoder)
    with torch.no_grad():
        ref_cond, ref_uncond = StableDiffusionPipeline.encode_image(
            fake_pipe, Image.fromarray(arr), "cpu", 1, output_hidden_states=(variant == "plus")
        )
    cond = embeds_for(info, *encode(encoder, preprocess(image)))
    uncond = unconditional_embeds(encoder, info, cond)
    assert (cond - ref_cond).abs().max() < 1e-4
    assert (uncond - ref_uncond).abs().max() < 1e-5


def test_combine():
    e = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
    assert torch.equal(combine_embeds(e, "concat"), e)
    assert torch.equal(combine_embeds(e, "add"), torch.tensor([[9.0, 18.0]]))
    assert torch.equal(combine_embeds(e, "subtract"), torch.tensor([[-3.0, -6.0]]))
    assert torch.equal(combine_embeds(e, "average"), torch.tensor([[3.0, 6.0]]))
    n = e / e.norm(dim=0, keepdim=True)
    assert torch.allclose(combine_embeds(e, "norm average"), n.mean(0, keepdim=True))
