"""Per-layer IP-Adapter weights: ComfyUI_IPAdapter_plus weight types and diffusers' InstantStyle dicts.

Two orders matter and must not be confused:

* **layer order j** (what this module returns): diffusers' ``unet.attn_processors`` order of the
  cross-attention layers, which is also the h94 file's ``ip_adapter.{2j+1}`` index: down blocks, then up
  blocks, then the **mid block LAST**.
* **transformer index t** (what the weight-type math uses): ComfyUI's execution order of the spatial
  transformers (diffusers ``Transformer2DModel``s): input blocks, **middle block in the middle**, output
  blocks. L = 16 (SD1.5) or 11 (SDXL).

SD1.5 (one transformer block per transformer, so 16 layers)::

    j:  0  1  2  3  4  5 | 6  7  8  9 10 11 12 13 14 | 15
    t:  0  1  2  3  4  5 | 7  8  9 10 11 12 13 14 15 |  6   <- mid: j = 15, t = 6
        input (down)       output (up)                 middle

SDXL (11 transformers of depth 2/2/10/10 | 10/10/10/2/2/2 | mid 10 = 70 layers; every layer inside a
transformer shares its t)::

    j  0-1 2-3 4-13 14-23 | 24-33 34-43 44-53 54-55 56-57 58-59 | 60-69
    t   0   1    2    3   |   5     6     7     8     9     10  |   4     <- mid: j = 60..69, t = 4

Per-block math (w = weight, wc = weight_composition, default w), as in ComfyUI_IPAdapter_plus except that the
middle block IS patched here (ComfyUI_IPAdapter_plus registers it under a key ComfyUI never looks up, so
there it silently gets no image attention):

* linear: w everywhere.
* ease in: w·(0.05 + 0.95·(1 − t/L));  ease out: w·(0.05 + 0.95·t/L).
* ease in-out: w·(0.05 + 0.95·(1 − |t − L/2|/(L/2)));  reverse in-out: w·(0.05 + 0.95·|t − L/2|/(L/2)).
* weak input / weak middle / weak output: w, times 0.2 on the blocks of that kind.
* strong middle: w, times 0.2 on input and output blocks (the middle keeps w).
* dictionary types (t -> weight, every other block 0):

  ====================== ================================== =====================
  type                   SD1.5                              SDXL
  ====================== ================================== =====================
  style transfer         {0,1,2,3,9..15: w}                 {6: w}
  composition            {4: 0.25·w, 5: w}                  {3: w}
  strong style transfer  all but {4,5}: w (mid t=6 incl.)   all but {3}: w (mid t=4 incl.)
  style and composition  style ∪ {4: 0.25·wc, 5: wc}        {3: wc, 6: w}
  strong style and comp. all: w, {4,5: wc}                  all: w, {3: wc}
  style transfer precise style ∪ {4: 0.25·wc, 5: wc}        {3: wc, 6: w}
  composition precise    {0-3,9-15: b, 4: 0.25·w, 5: w,     {3: w, 6: b, others: 0.1·b}
                         6-8: 0.1·b}
  ====================== ================================== =====================

  (precise: wc = style_boost or w; b = composition_boost or w.) The precise types also SWAP the two CFG halves
  on some blocks (:func:`swapped_layers`): the style type on the composition blocks, the composition type on
  every other block.
"""

from __future__ import annotations

WEIGHT_TYPES = (
    "linear",
    "ease in",
    "ease out",
    "ease in-out",
    "reverse in-out",
    "weak input",
    "weak output",
    "weak middle",
    "strong middle",
    "style transfer",
    "composition",
    "style and composition",
    "strong style transfer",
)
# ComfyUI_IPAdapter_plus's precise types (and the internal "expand_style" type of IPAdapterStyleComposition);
# kept apart from WEIGHT_TYPES so the older IPAdapterApply choices stay as they were.
PRECISE_TYPES = ("style transfer precise", "composition precise")
PLUS_WEIGHT_TYPES = WEIGHT_TYPES[:11] + ("strong style transfer", "style and composition") + PRECISE_TYPES
_EXTRA_TYPES = PRECISE_TYPES + ("strong style and composition",)

# (block kind, t, number of transformer layers) per diffusers Transformer2DModel, in diffusers (j) order.
_LAYOUT = {
    "sd15": [("input", t, 1) for t in range(6)]
    + [("output", t, 1) for t in range(7, 16)]
    + [("middle", 6, 1)],
    "sdxl": [("input", 0, 2), ("input", 1, 2), ("input", 2, 10), ("input", 3, 10)]
    + [
        ("output", 5, 10),
        ("output", 6, 10),
        ("output", 7, 10),
        ("output", 8, 2),
        ("output", 9, 2),
        ("output", 10, 2),
    ]
    + [("middle", 4, 10)],
}
_TRANSFORMERS = {"sd15": 16, "sdxl": 11}


def layer_table(arch: str) -> tuple[tuple[str, int], ...]:
    """(block kind, transformer index t) for every cross-attention layer j, in diffusers order."""
    if arch not in _LAYOUT:
        raise ValueError(f"per-block weights are defined for sd15 and sdxl, not {arch!r}")
    return tuple((kind, t) for kind, t, depth in _LAYOUT[arch] for _ in range(depth))


def _dict_weights(weight_type: str, w: float, wc: float, arch: str) -> dict[int, float]:
    if arch == "sd15":
        style = {t: w for t in (0, 1, 2, 3, *range(9, 16))}
        table = {
            "style transfer": style,
            "composition": {4: 0.25 * w, 5: w},
            "strong style transfer": {t: w for t in range(16) if t not in (4, 5)},
            "style and composition": {**style, 4: 0.25 * wc, 5: wc},
            "strong style and composition": {**{t: w for t in range(16)}, 4: wc, 5: wc},
            # precise: wc = style_boost (or w); the swap of composition_layers is applied by the patch
            "style transfer precise": {**style, 4: 0.25 * wc, 5: wc},
            # composition precise: w = the composition weight, wc = composition_boost (or w)
            "composition precise": {**{t: wc for t in (0, 1, 2, 3, *range(9, 16))}, 4: 0.25 * w, 5: w,
                                    **{t: 0.1 * wc for t in (6, 7, 8)}},
        }
    else:
        table = {
            "style transfer": {6: w},
            "composition": {3: w},
            "strong style transfer": {t: w for t in range(11) if t != 3},
            "style and composition": {3: wc, 6: w},
            "strong style and composition": {**{t: w for t in range(11)}, 3: wc},
            "style transfer precise": {3: wc, 6: w},
            "composition precise": {**{t: 0.1 * wc for t in range(11)}, 3: w, 6: wc},
        }
    return table[weight_type]


def composition_layers(arch: str) -> frozenset[int]:
    """Transformer indices t of the composition (layout) blocks: {4, 5} on SD1.5, {3} on SDXL."""
    return frozenset((4, 5)) if arch == "sd15" else frozenset((3,))


def swapped_layers(weight_type: str, arch: str) -> tuple[bool, ...]:
    """Per layer j: does a precise weight type feed the image to the NEGATIVE side there?

    "style transfer precise" swaps on the composition blocks, "composition precise" everywhere else. A swapped
    layer attends the unconditional batch half to the reference tokens and the conditional half to zero tokens
    (whose image K/V are 0, so the image term vanishes there), so guidance pushes AWAY from what that block
    would copy (ComfyUI_IPAdapter_plus's definition). Other types swap nothing.
    """
    comp = composition_layers(arch)
    table = layer_table(arch)
    if weight_type == "style transfer precise":
        return tuple(t in comp for _, t in table)
    if weight_type == "composition precise":
        return tuple(t not in comp for _, t in table)
    return tuple(False for _ in table)


def alt_layers(arch: str) -> tuple[bool, ...]:
    """Per layer j: is it a composition block (where IPAdapterStyleComposition uses the composition image)?"""
    comp = composition_layers(arch)
    return tuple(t in comp for _, t in layer_table(arch))


def mad_scientist_weights(text: str, weight: float, arch: str) -> tuple[float, ...]:
    """IPAdapterMS ``layer_weights`` ("t:value, t:value"): layer weight = value·weight at transformer index t,
    0 elsewhere (ComfyUI_IPAdapter_plus: unnamed blocks get no image attention)."""
    table = layer_table(arch)
    d = parse_layer_weights(text)
    return tuple(float(d.get(t, 0.0)) * float(weight) for _, t in table)


def parse_layer_weights(text: str) -> dict[int, float]:
    """``"0:1.0, 6:0.5"`` -> {0: 1.0, 6: 0.5}; ValueError with a sentence otherwise."""
    out: dict[int, float] = {}
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if ":" not in part:
            raise ValueError(f"layer_weights entry {part!r} is not 'index:weight'")
        k, v = part.split(":", 1)
        try:
            out[int(k.strip())] = float(v.strip())
        except ValueError:
            raise ValueError(f"layer_weights entry {part!r} is not 'index:weight' with numbers") from None
    return out


def layer_weights(
    weight_type: str, weight: float, arch: str, weight_composition: float | None = None
) -> tuple[float, ...]:
    """Absolute IP weight of every cross-attention layer (diffusers order) for a ComfyUI weight type."""
    if weight_type not in WEIGHT_TYPES + _EXTRA_TYPES:
        raise ValueError(f"unknown weight type {weight_type!r}; expected one of {', '.join(WEIGHT_TYPES)}")
    table = layer_table(arch)
    w = float(weight)
    wc = w if weight_composition is None else float(weight_composition)
    L = _TRANSFORMERS[arch]
    if weight_type in ("style transfer", "composition", "style and composition", "strong style transfer",
                       *_EXTRA_TYPES):
        d = _dict_weights(weight_type, w, wc, arch)
        return tuple(float(d.get(t, 0.0)) for _, t in table)

    def one(kind: str, t: int) -> float:
        if weight_type == "ease in":
            return w * (0.05 + 0.95 * (1 - t / L))
        if weight_type == "ease out":
            return w * (0.05 + 0.95 * (t / L))
        if weight_type == "ease in-out":
            return w * (0.05 + 0.95 * (1 - abs(t - L / 2) / (L / 2)))
        if weight_type == "reverse in-out":
            return w * (0.05 + 0.95 * (abs(t - L / 2) / (L / 2)))
        if weight_type == f"weak {kind}":
            return w * 0.2
        if weight_type == "strong middle" and kind != "middle":
            return w * 0.2
        return w

    return tuple(float(one(kind, t)) for kind, t in table)


def instantstyle_weights(scale_dict: dict, unet) -> tuple[float, ...]:
    """Per-layer weights for an InstantStyle dict, with exactly diffusers' ``set_ip_adapter_scale`` meaning.

    ``{"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}, "mid": 0.5}``: blocks not named get 0,
    a number for a block applies to all its transformers, a list gives one value per transformer (every
    transformer_block layer inside a transformer shares it). The expansion is diffusers' own helper, so
    unknown block names raise the same errors.
    """
    from diffusers.loaders.unet_loader_utils import _maybe_expand_lora_scales

    from .files import cross_attention_names

    expanded = _maybe_expand_lora_scales(unet, [scale_dict], default_scale=0.0)[0]
    out = []
    for name in cross_attention_names(unet):
        value = 1.0  # diffusers' processors start at scale 1.0; a prefix match below replaces it
        for prefix, s in expanded.items():
            if name.startswith(prefix):
                value = float(s)
        out.append(value)
    return tuple(out)
