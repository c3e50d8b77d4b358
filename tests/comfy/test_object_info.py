"""Every ComfyUI core node ipgraph serves, checked in /object_info against ComfyUI's own signature.

The table is transcribed from ComfyUI's sources (comfyanonymous/ComfyUI): ``nodes.py`` at commit e60e19b1
(INPUT_TYPES, RETURN_TYPES / RETURN_NAMES, CATEGORY, NODE_DISPLAY_NAME_MAPPINGS), ``comfy_extras/nodes_clip_sdxl.py``,
``comfy_extras/nodes_upscale_model.py``, ``comfy_extras/nodes_mask.py``, ``comfy_extras/nodes_canny.py`` and
``comfy_extras/nodes_images.py`` (ImageCrop); three later additions of ComfyUI are included as it has them now:
ControlNetApplyAdvanced's optional ``vae`` (display "Apply ControlNet"; the legacy node "Apply ControlNet (OLD)"),
CLIPVisionEncode's ``crop`` and InpaintModelConditioning's ``noise_mask``.

Each row: (required inputs in order, optional inputs in order, output types, output names, category,
display name). ipgraph extras may follow ComfyUI's inputs, only as optional inputs.
"""

from __future__ import annotations

import pytest

import ipgraph.nodes  # noqa: F401
from ipgraph.engine import REGISTRY
from ipgraph.server.comfy_api import object_info, widget_slots

C = "CONDITIONING"
COMFY = {
    "CheckpointLoaderSimple": (["ckpt_name"], [], ["MODEL", "CLIP", "VAE"], ["MODEL", "CLIP", "VAE"], "loaders",
                               "Load Checkpoint"),
    "VAELoader": (["vae_name"], [], ["VAE"], ["VAE"], "loaders", "Load VAE"),
    "CLIPSetLastLayer": (["clip", "stop_at_clip_layer"], [], ["CLIP"], ["CLIP"], "conditioning",
                         "CLIP Set Last Layer"),
    "CLIPTextEncode": (["text", "clip"], [], [C], [C], "conditioning", "CLIP Text Encode (Prompt)"),
    "CLIPTextEncodeSDXL": (["clip", "width", "height", "crop_w", "crop_h", "target_width", "target_height",
                            "text_g", "text_l"], [], [C], [C], "advanced/conditioning", "CLIPTextEncodeSDXL"),
    "EmptyLatentImage": (["width", "height", "batch_size"], [], ["LATENT"], ["LATENT"], "latent",
                         "Empty Latent Image"),
    "LatentUpscale": (["samples", "upscale_method", "width", "height", "crop"], [], ["LATENT"], ["LATENT"],
                      "latent", "Upscale Latent"),
    "LatentUpscaleBy": (["samples", "upscale_method", "scale_by"], [], ["LATENT"], ["LATENT"], "latent",
                        "Upscale Latent By"),
    "LatentComposite": (["samples_to", "samples_from", "x", "y", "feather"], [], ["LATENT"], ["LATENT"], "latent",
                        "Latent Composite"),
    "LatentBlend": (["samples1", "samples2", "blend_factor"], [], ["LATENT"], ["LATENT"], "_for_testing",
                    "Latent Blend"),
    "RepeatLatentBatch": (["samples", "amount"], [], ["LATENT"], ["LATENT"], "latent/batch", "Repeat Latent Batch"),
    "LatentFromBatch": (["samples", "batch_index", "length"], [], ["LATENT"], ["LATENT"], "latent/batch",
                        "Latent From Batch"),
    "VAEEncode": (["pixels", "vae"], [], ["LATENT"], ["LATENT"], "latent", "VAE Encode"),
    "VAEDecode": (["samples", "vae"], [], ["IMAGE"], ["IMAGE"], "latent", "VAE Decode"),
    "VAEDecodeTiled": (["samples", "vae", "tile_size", "overlap", "temporal_size", "temporal_overlap"], [], ["IMAGE"],
                       ["IMAGE"], "_for_testing", "VAE Decode (Tiled)"),
    "VAEEncodeForInpaint": (["pixels", "vae", "mask", "grow_mask_by"], [], ["LATENT"], ["LATENT"],
                            "latent/inpaint", "VAE Encode (for Inpainting)"),
    "InpaintModelConditioning": (["positive", "negative", "vae", "pixels", "mask", "noise_mask"], [],
                                 [C, C, "LATENT"], ["positive", "negative", "latent"], "conditioning/inpaint",
                                 "InpaintModelConditioning"),
    "SetLatentNoiseMask": (["samples", "mask"], [], ["LATENT"], ["LATENT"], "latent/inpaint",
                           "Set Latent Noise Mask"),
    "LoadImage": (["image"], [], ["IMAGE", "MASK"], ["IMAGE", "MASK"], "image", "Load Image"),
    "LoadImageMask": (["image", "channel"], [], ["MASK"], ["MASK"], "mask", "Load Image (as Mask)"),
    "SaveImage": (["images", "filename_prefix"], [], [], [], "image", "Save Image"),
    "PreviewImage": (["images"], [], [], [], "image", "Preview Image"),
    "ImageScale": (["image", "upscale_method", "width", "height", "crop"], [], ["IMAGE"], ["IMAGE"],
                   "image/upscaling", "Upscale Image"),
    "ImageScaleBy": (["image", "upscale_method", "scale_by"], [], ["IMAGE"], ["IMAGE"], "image/upscaling",
                     "Upscale Image By"),
    "ImageInvert": (["image"], [], ["IMAGE"], ["IMAGE"], "image", "Invert Image"),
    "ImagePadForOutpaint": (["image", "left", "top", "right", "bottom", "feathering"], [], ["IMAGE", "MASK"],
                            ["IMAGE", "MASK"], "image", "Pad Image for Outpainting"),
    "ImageCrop": (["image", "width", "height", "x", "y"], [], ["IMAGE"], ["IMAGE"], "image/transform",
                  "Crop Image"),
    "ControlNetLoader": (["control_net_name"], [], ["CONTROL_NET"], ["CONTROL_NET"], "loaders",
                         "Load ControlNet Model"),
    "DiffControlNetLoader": (["model", "control_net_name"], [], ["CONTROL_NET"], ["CONTROL_NET"], "loaders",
                             "Load ControlNet Model (diff)"),
    "ControlNetApply": (["conditioning", "control_net", "image", "strength"], [], [C], [C],
                        "conditioning/controlnet", "Apply ControlNet (OLD)"),
    "ControlNetApplyAdvanced": (["positive", "negative", "control_net", "image", "strength", "start_percent",
                                 "end_percent"], ["vae"], [C, C], ["positive", "negative"],
                                "conditioning/controlnet", "Apply ControlNet"),
    "CLIPVisionLoader": (["clip_name"], [], ["CLIP_VISION"], ["CLIP_VISION"], "loaders", "Load CLIP Vision"),
    "CLIPVisionEncode": (["clip_vision", "image", "crop"], [], ["CLIP_VISION_OUTPUT"], ["CLIP_VISION_OUTPUT"],
                         "conditioning", "CLIP Vision Encode"),
    "UpscaleModelLoader": (["model_name"], [], ["UPSCALE_MODEL"], ["UPSCALE_MODEL"], "loaders",
                           "Load Upscale Model"),
    "ImageUpscaleWithModel": (["upscale_model", "image"], [], ["IMAGE"], ["IMAGE"], "image/upscaling",
                              "Upscale Image (using Model)"),
    "GrowMask": (["mask", "expand", "tapered_corners"], [], ["MASK"], ["MASK"], "mask", "GrowMask"),
    "InvertMask": (["mask"], [], ["MASK"], ["MASK"], "mask", "InvertMask"),
    "SolidMask": (["value", "width", "height"], [], ["MASK"], ["MASK"], "mask", "SolidMask"),
    "MaskComposite": (["destination", "source", "x", "y", "operation"], [], ["MASK"], ["MASK"], "mask",
                      "MaskComposite"),
    "FeatherMask": (["mask", "left", "top", "right", "bottom"], [], ["MASK"], ["MASK"], "mask", "FeatherMask"),
    "ThresholdMask": (["mask", "value"], [], ["MASK"], ["MASK"], "mask", "ThresholdMask"),
    "ImageToMask": (["image", "channel"], [], ["MASK"], ["MASK"], "mask", "Convert Image to Mask"),
    "MaskToImage": (["mask"], [], ["IMAGE"], ["IMAGE"], "mask", "Convert Mask to Image"),
    "Canny": (["image", "low_threshold", "high_threshold"], [], ["IMAGE"], ["IMAGE"], "image/preprocessors",
              "Canny"),
}

# ComfyUI's choice lists where ipgraph must offer them in the same order (the editor shows the first by default).
CHOICES = {
    ("ImageScale", "upscale_method"): ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"],
    ("ImageScaleBy", "upscale_method"): ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"],
    ("LatentUpscale", "crop"): ["disabled", "center"],
    ("LoadImageMask", "channel"): ["alpha", "red", "green", "blue"],
    ("MaskComposite", "operation"): ["multiply", "add", "subtract", "and", "or", "xor"],
}
DEFAULTS = {
    ("CLIPSetLastLayer", "stop_at_clip_layer"): (-1, -24, -1), ("EmptyLatentImage", "width"): (512, 16, 16384),
    ("CLIPTextEncodeSDXL", "width"): (1024, 0, 16384), ("LatentUpscaleBy", "scale_by"): (1.5, 0.01, 8.0),
    ("LatentBlend", "blend_factor"): (0.5, 0, 1), ("ImagePadForOutpaint", "feathering"): (40, 0, 16384),
    ("LatentFromBatch", "batch_index"): (0, 0, 63), ("RepeatLatentBatch", "amount"): (1, 1, 64),
    ("VAEDecodeTiled", "tile_size"): (512, 64, 4096), ("VAEDecodeTiled", "overlap"): (64, 0, 4096),
    ("VAEDecodeTiled", "temporal_size"): (64, 8, 4096), ("VAEDecodeTiled", "temporal_overlap"): (8, 4, 4096),
    ("VAEEncodeForInpaint", "grow_mask_by"): (6, 0, 64), ("ControlNetApply", "strength"): (1.0, 0.0, 10.0),
}


@pytest.fixture(scope="module")
def info():
    return object_info(REGISTRY)


@pytest.mark.parametrize("name", sorted(COMFY))
def test_object_info_matches_comfyui(info, name):
    required, optional, types, names, category, display = COMFY[name]
    entry = info[name]
    assert entry["input_order"]["required"] == required
    assert entry["input_order"]["optional"][:len(optional)] == optional  # ipgraph extras only after ComfyUI's
    assert list(entry["input"]["required"]) == required
    assert entry["output"] == types and entry["output_name"] == names
    assert entry["output_is_list"] == [False] * len(types)
    assert (entry["category"], entry["display_name"]) == (category, display)


def test_choices_defaults_and_upload_widget(info):
    for (name, field), choices in CHOICES.items():
        spec = info[name]["input"]["required"][field]
        assert spec[0] == choices, (name, field)
    for (name, field), (default, lo, hi) in DEFAULTS.items():
        opts = info[name]["input"]["required"][field][1]
        assert (opts["default"], opts["min"], opts["max"]) == (default, lo, hi), (name, field)
    for name in ("LoadImage", "LoadImageMask"):
        assert info[name]["input"]["required"]["image"][1]["image_upload"] is True
    # the editor's widget order: LoadImage's widgets_values are [image, "image" upload]
    assert widget_slots(REGISTRY["LoadImage"]) == [("image", "value"), ("image", "upload")]
    assert [n for n, _ in widget_slots(REGISTRY["CLIPTextEncodeSDXL"])] == COMFY["CLIPTextEncodeSDXL"][0][1:]


def test_aliases_replaced_by_real_nodes():
    """The importer's comfy_aliases for these classes are gone: each is a registered node type of its own."""
    aliased = {a for nt in (REGISTRY[t] for t in REGISTRY.types()) for a in nt.comfy_aliases}
    assert not aliased & set(COMFY)
