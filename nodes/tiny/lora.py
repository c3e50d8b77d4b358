"""Tiny LoRA files for the tiny SD1.5 / SDXL models, in the layouts users download.

* ``tiny-sd15-lora-kohya.safetensors``: sd-scripts SD1.5 (``lora_unet_`` in diffusers naming, ``lora_te_``,
  ``.alpha``), fp16 as sd-scripts saves.
* ``tiny-sd15-lora-peft.safetensors``: diffusers ``save_lora_weights`` layout (``unet.``/``text_encoder.``,
  ``lora_A``/``lora_B``).
* ``tiny-sdxl-lora-kohya.safetensors``: sd-scripts SDXL (``lora_unet_input_blocks_4_1_...`` original naming,
  ``lora_te1_``/``lora_te2_``); ``tiny-sdxl-lora-peft.safetensors`` (``text_encoder_2.`` too).
* ``tiny-sd15-locon.safetensors``: kohya LoCon (also the resnet convs, original naming, one with a Tucker mid);
  ``tiny-sd15-loha.safetensors`` / ``tiny-sd15-lokr.safetensors``: LyCORIS LoHa / LoKr.
* ``tiny-sd15-dora-kohya.safetensors``: LyCORIS DoRA in kohya layout (``.dora_scale`` ``[1, in]``, what ComfyUI
  reads); ``tiny-sd15-dora-peft.safetensors``: diffusers/peft DoRA (``.lora_magnitude_vector`` ``[out]``, as
  ``save_lora_weights`` writes a ``use_dora=True`` adapter), UNet only.

Random factors (fixed seeds) scaled so that a LoRA visibly changes the tiny models' output.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ..lora.files import flat
from ..models.single_file import unet_to_original
from .common import atomic_write

GENERATOR_VERSION = 1
ATTN = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
        "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
TE = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def _targets(module, endings) -> dict[str, torch.Tensor]:
    return {n: m.weight for n, m in module.named_modules() if n.endswith(endings) and hasattr(m, "weight")}


def _pair(weight: torch.Tensor, rank: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    out, inp = weight.shape[0], weight[0].numel()
    down = torch.randn(rank, inp, generator=g) / inp ** 0.5
    up = torch.randn(out, rank, generator=g) * 0.3
    if weight.ndim == 4:
        down = down.reshape(rank, *weight.shape[1:])
        up = up[:, :, None, None]
    return down, up


def kohya_lora(unet, text_encoders, seed: int, rank=4, ldm_names=False, dtype=torch.float16) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    names = {n: n for n in _targets(unet, ATTN)}
    if ldm_names:
        ldm = unet_to_original({f"{n}.weight": f"{n}.weight" for n in names}, unet.config)
        names = {v[: -len(".weight")]: k[: -len(".weight")] for k, v in ldm.items()}
    weights = _targets(unet, ATTN)
    for n, original in names.items():
        down, up = _pair(weights[n], rank, g)
        key = "lora_unet_" + flat(original)
        sd.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                   f"{key}.alpha": torch.tensor(float(rank) / 2)})
    prefixes = ["lora_te_"] if len(text_encoders) == 1 else ["lora_te1_", "lora_te2_"]
    for prefix, enc in zip(prefixes, text_encoders, strict=True):
        for n, w in _targets(enc, TE).items():
            down, up = _pair(w, rank, g)
            key = prefix + flat(n if n.startswith("text_model.") else "text_model." + n)
            sd.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                       f"{key}.alpha": torch.tensor(float(rank))})
    return {k: v.to(dtype) for k, v in sd.items()}


def peft_lora(unet, text_encoders, seed: int, rank=4) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for n, w in _targets(unet, ATTN).items():
        down, up = _pair(w, rank, g)
        sd.update({f"unet.{n}.lora_A.weight": down, f"unet.{n}.lora_B.weight": up})
    for prefix, enc in zip(("text_encoder", "text_encoder_2"), text_encoders, strict=False):
        for n, w in _targets(enc, TE).items():
            down, up = _pair(w, rank, g)
            n = n if n.startswith("text_model.") else "text_model." + n
            sd.update({f"{prefix}.{n}.lora_A.weight": down, f"{prefix}.{n}.lora_B.weight": up})
    return sd


def lycoris(unet, kind: str, seed: int, rank=4) -> dict:
    """LoCon (attention + resnet convs), LoHa or LoKr on the attention layers, kohya prefixes."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    endings = ATTN + (("conv1", "conv2") if kind == "locon" else ())
    weights = _targets(unet, endings)
    ldm = unet_to_original({f"{n}.weight": f"{n}.weight" for n in weights}, unet.config)
    tucker_done = False
    for original_w, name_w in ldm.items():
        w = weights[name_w[: -len(".weight")]]
        key = "lora_unet_" + flat(original_w[: -len(".weight")])
        sd[f"{key}.alpha"] = torch.tensor(float(rank) / 2)
        if kind == "locon":
            down, up = _pair(w, rank, g)
            if w.ndim == 4 and "out_layers_3" in key and not tucker_done:  # one Tucker-decomposed conv
                tucker_done = True
                sd[f"{key}.lora_mid.weight"] = torch.randn(rank, rank, *w.shape[2:], generator=g) * 0.3
                down = torch.randn(rank, w.shape[1], 1, 1, generator=g) / w.shape[1] ** 0.5
            sd.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up})
        elif kind == "loha":
            out, inp = w.shape[0], w[0].numel()
            for i in (1, 2):
                sd[f"{key}.hada_w{i}_a"] = torch.randn(out, rank, generator=g) * 0.5
                sd[f"{key}.hada_w{i}_b"] = torch.randn(rank, inp, generator=g) / inp ** 0.5
        else:  # lokr: w1 whole [2, 2] (factor), w2 = a @ b
            out, inp = w.shape[0], w[0].numel()
            sd[f"{key}.lokr_w1"] = torch.randn(2, 2, generator=g)
            sd[f"{key}.lokr_w2_a"] = torch.randn(out // 2, rank, generator=g) * 0.3
            sd[f"{key}.lokr_w2_b"] = torch.randn(rank, inp // 2, generator=g) / inp ** 0.5
    return sd


def _magnitude(weight: torch.Tensor, delta: torch.Tensor, per_output: bool, g: torch.Generator) -> torch.Tensor:
    """A trained-looking DoRA magnitude: the norm of ``weight + delta`` (per output or input channel) × 0.5..1.5."""
    v = weight.detach().float() + delta.reshape(weight.shape)
    if per_output:
        norm = v.reshape(v.shape[0], -1).norm(dim=1)
    else:
        norm = v.transpose(0, 1).reshape(v.shape[1], -1).norm(dim=1).reshape(1, v.shape[1], *[1] * (v.ndim - 2))
    return norm * (0.5 + torch.rand(norm.shape, generator=g))


def kohya_dora(unet, seed: int, rank=4) -> dict:
    """LyCORIS DoRA on the UNet's attention / feed-forward linears, kohya prefixes, ``dora_scale`` ``[1, in]``."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    alpha = float(rank) / 2
    for n, w in _targets(unet, ATTN).items():
        down, up = _pair(w, rank, g)
        key = "lora_unet_" + flat(n)
        sd.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(alpha),
                   f"{key}.dora_scale": _magnitude(w, alpha / rank * up.flatten(1) @ down.flatten(1), False, g)})
    return {k: v.to(torch.float16) for k, v in sd.items()}


def peft_dora(unet, text_encoders, seed: int, rank=4) -> dict:
    """diffusers/peft DoRA (``use_dora=True``): ``lora_A``/``lora_B`` + ``lora_magnitude_vector`` ``[out]``.

    The bundled file is UNet-only: diffusers 0.42 + transformers load a text encoder's ``lora_magnitude_vector``
    under another name and leave the magnitudes at their initial values (its load report says MISSING), so no
    oracle exists for DoRA text encoders; ipgraph reads them the same way as the UNet's.
    """
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for prefix, module, endings in [("unet", unet, ATTN)] + [(p, e, TE) for p, e in zip(
            ("text_encoder", "text_encoder_2"), text_encoders, strict=False)]:
        for n, w in _targets(module, endings).items():
            down, up = _pair(w, rank, g)
            if prefix != "unet" and not n.startswith("text_model."):
                n = "text_model." + n
            sd.update({f"{prefix}.{n}.lora_A.weight": down, f"{prefix}.{n}.lora_B.weight": up,
                       f"{prefix}.{n}.lora_magnitude_vector": _magnitude(w, up @ down, True, g)})
    return sd


def write_tiny_loras(models_dir: Path, models: dict) -> dict[str, Path]:
    """Write every tiny LoRA into ``models_dir/loras``; ``models`` maps "sd15"/"sdxl" to build_tiny dicts."""
    folder = Path(models_dir) / "loras"

    def unet(kind):
        return models[kind]["unet"]

    def text_encoders(kind):  # looked up only when a file is written: ``models`` may build on first use
        return tuple(models[kind][k] for k in ("text_encoder", "text_encoder_2") if k in models[kind])

    makers = {
        "tiny-sd15-lora-kohya.safetensors": lambda: kohya_lora(unet("sd15"), text_encoders("sd15"), 100),
        "tiny-sd15-lora-peft.safetensors": lambda: peft_lora(unet("sd15"), text_encoders("sd15"), 101),
        "tiny-sdxl-lora-kohya.safetensors": lambda: kohya_lora(unet("sdxl"), text_encoders("sdxl"), 102,
                                                                ldm_names=True),
        "tiny-sdxl-lora-peft.safetensors": lambda: peft_lora(unet("sdxl"), text_encoders("sdxl"), 103),
        "tiny-sd15-locon.safetensors": lambda: lycoris(unet("sd15"), "locon", 104),
        "tiny-sd15-loha.safetensors": lambda: lycoris(unet("sd15"), "loha", 105),
        "tiny-sd15-lokr.safetensors": lambda: lycoris(unet("sd15"), "lokr", 106),
        "tiny-sd15-dora-kohya.safetensors": lambda: kohya_dora(unet("sd15"), 107),
        "tiny-sd15-dora-peft.safetensors": lambda: peft_dora(unet("sd15"), (), 108),
    }
    out = {}
    for name, make in makers.items():
        dest = folder / name
        stamp = dest.with_name(f".{name}.v{GENERATOR_VERSION}")
        if not (dest.exists() and stamp.exists()):
            tensors = {k: v.contiguous() for k, v in make().items()}
            atomic_write(dest, lambda tmp, t=tensors: save_file(t, str(tmp), metadata={"format": "pt"}))
            stamp.touch()
        out[name] = dest
    return out
