"""IP-Adapter library: h94 files, projection models, decoupled cross-attention patches, weights, CLIP vision.

Pure library code (torch, diffusers, transformers); it imports nothing from ``engine``. The graph nodes
(IPAdapterApply, CLIPVisionEncode, ...) are written on top of it.

Module map: files (read/inspect/pair-check adapter files), projection (image_proj modules), patch + attention
(IPAdapterPatch and installing it during sampling), weights (weight types, InstantStyle), encoder (CLIP vision
loading, preprocessing, negatives, combining). ComfyUI_IPAdapter_plus's node set: plus_nodes (the nodes),
plus_apply (the one apply implementation), presets (unified loader by file headers), imageprep (prep, noise,
tiles, sharpening), schedule (per-frame weights).
"""

from .encoder import (
    COMBINE_METHODS,
    CROP_MODES,
    combine_embeds,
    embeds_for,
    encode,
    load_clip_vision,
    preprocess,
    unconditional_embeds,
)
from .files import (
    EncoderInfo,
    IPAdapterFileError,
    IPAdapterInfo,
    IPAdapterWeights,
    UNetInfo,
    check_pairing,
    cross_attention_names,
    describe_encoder,
    describe_unet,
    inspect_ipadapter,
    load_ipadapter,
)
from .patch import EMBEDS_SCALING, IPAdapterPatch, IPAdapterPatchError, installed
from .weights import WEIGHT_TYPES, instantstyle_weights, layer_table, layer_weights

__all__ = [
    "COMBINE_METHODS",
    "CROP_MODES",
    "EMBEDS_SCALING",
    "WEIGHT_TYPES",
    "EncoderInfo",
    "IPAdapterFileError",
    "IPAdapterInfo",
    "IPAdapterPatch",
    "IPAdapterPatchError",
    "IPAdapterWeights",
    "UNetInfo",
    "check_pairing",
    "combine_embeds",
    "cross_attention_names",
    "describe_encoder",
    "describe_unet",
    "embeds_for",
    "encode",
    "inspect_ipadapter",
    "installed",
    "instantstyle_weights",
    "layer_table",
    "layer_weights",
    "load_clip_vision",
    "load_ipadapter",
    "preprocess",
    "unconditional_embeds",
]
