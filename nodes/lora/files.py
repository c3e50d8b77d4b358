"""Reading LoRA files in the layouts users download, and matching their modules to a model's weights.

Formats (read from the keys, never from the file name):

* kohya / A1111 (sd-scripts, also LoCon and LyCORIS): ``lora_unet_<module>``, ``lora_te_<module>`` (SD1.5),
  ``lora_te1_`` / ``lora_te2_`` (SDXL's two text encoders), module names with ``_`` for ``.``, in diffusers
  naming (SD1.5 sd-scripts) or the original LDM naming (SDXL sd-scripts, ``input_blocks_4_1_...``); weights
  ``.lora_down.weight`` / ``.lora_up.weight`` (+ ``.lora_mid.weight``) and ``.alpha``.
* LyCORIS LoHa (``.hada_w1_a/_b``, ``.hada_w2_a/_b``, optional ``.hada_t1/_t2``) and LoKr (``.lokr_w1`` or
  ``.lokr_w1_a/_b``, ``.lokr_w2`` or ``.lokr_w2_a/_b``, optional ``.lokr_t2``), same prefixes; ``.diff`` full
  weight differences. DoRA: ``.dora_scale`` next to any of these (ComfyUI's convention, see
  :class:`patch.DoraTerm`).
* diffusers / peft: ``unet.<module>`` / ``text_encoder.`` / ``text_encoder_2.`` with ``.lora_A.weight`` /
  ``.lora_B.weight`` (also diffusers' older ``.lora.down/up.weight``, ``.lora_linear_layer.down/up.weight`` and
  ``processor.to_q_lora.down.weight``), and unprefixed UNet-only files (``down_blocks....``); DoRA as diffusers
  saves it, ``.lora_magnitude_vector`` (peft's convention).

``.safetensors`` files are read with safetensors; ``.pt`` / ``.bin`` / ``.ckpt`` only through
``torch.load(weights_only=True)`` (a hostile pickle cannot run code).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models.single_file import unet_to_original
from .patch import DoraTerm, FullTerm, LohaTerm, LokrTerm, LoraTerm

KOHYA_PREFIXES = (("lora_unet_", "unet"), ("lora_te1_", "te0"), ("lora_te2_", "te1"), ("lora_te_", "te0"))
PEFT_PREFIXES = (("unet.", "unet"), ("text_encoder_2.", "te1"), ("text_encoder.", "te0"))
UNPREFIXED_UNET = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in.", "conv_out.", "time_embedding.")
SUFFIXES = {  # key ending -> field of the module entry
    ".lora_down.weight": "down", ".lora_up.weight": "up", ".lora_mid.weight": "mid", ".alpha": "alpha",
    ".lora_A.weight": "down", ".lora_B.weight": "up", ".lora.down.weight": "down", ".lora.up.weight": "up",
    ".lora_linear_layer.down.weight": "down", ".lora_linear_layer.up.weight": "up",
    ".hada_w1_a": "w1a", ".hada_w1_b": "w1b", ".hada_w2_a": "w2a", ".hada_w2_b": "w2b", ".hada_t1": "t1",
    ".hada_t2": "t2", ".lokr_w1": "k1", ".lokr_w1_a": "k1a", ".lokr_w1_b": "k1b", ".lokr_w2": "k2",
    ".lokr_w2_a": "k2a", ".lokr_w2_b": "k2b", ".lokr_t2": "kt2", ".diff": "diff", ".dora_scale": "dora",
    ".lora_magnitude_vector": "magnitude", ".lora_magnitude_vector.weight": "magnitude",
}
PART_NAMES = {"unet": "UNet", "te0": "text encoder", "te1": "second text encoder (SDXL)"}


class LoraFileError(ValueError):
    """A file that is not a usable LoRA; the message is a plain sentence."""


@dataclass(frozen=True, eq=False)
class LoraFile:
    """A parsed LoRA: one term per (part, flattened module name); what could not be read is listed."""

    path: str
    format: str  # "kohya" | "peft" | "lycoris" (kohya prefixes with LoHa/LoKr weights)
    terms: dict  # (part, flat module name) -> term
    skipped: tuple[str, ...] = field(default=())  # keys that are no LoRA weight ipgraph reads

    @property
    def parts(self) -> set[str]:
        return {part for part, _ in self.terms}

    def cache_nbytes(self) -> int:
        return 0


def flat(name: str) -> str:
    return name.replace(".", "_")


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        with open(path, "rb") as f:
            data = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated download, not a tensor file, pickled code refused by weights_only
        raise LoraFileError(f"{path.name} could not be read as a LoRA file ({exc.__class__.__name__}).") from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise LoraFileError(f"{path.name} does not hold a LoRA state dict.")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _split_key(key: str) -> tuple[str, str, str] | None:
    """``(part, flattened module, field)`` of one tensor key, or None when it is no LoRA weight."""
    key = re.sub(r"\.processor\.to_(q|k|v)_lora\.(down|up)\.weight$", r".to_\1.lora.\2.weight", key)
    key = re.sub(r"\.processor\.to_out_lora\.(down|up)\.weight$", r".to_out.0.lora.\1.weight", key)
    suffix = max((s for s in SUFFIXES if key.endswith(s)), key=len, default=None)
    if suffix is None:
        return None
    module = key[: -len(suffix)]
    for prefix, part in KOHYA_PREFIXES:
        if module.startswith(prefix):
            return part, module[len(prefix):], SUFFIXES[suffix]
    for prefix, part in PEFT_PREFIXES:
        if module.startswith(prefix):
            return part, flat(module[len(prefix):]), SUFFIXES[suffix]
    if module.startswith(UNPREFIXED_UNET):
        return "unet", flat(module), SUFFIXES[suffix]
    return None


def _term(entry: dict, key: str, name: str):
    if "dora" in entry or "magnitude" in entry:
        rest = {k: v for k, v in entry.items() if k not in ("dora", "magnitude")}
        if not rest:
            raise LoraFileError(f"{name} is damaged: module {key} has a DoRA magnitude but no LoRA weights.")
        inner = _term(rest, key, name)
        if "dora" in entry:
            return DoraTerm(inner, entry["dora"], "comfy")
        return DoraTerm(inner, entry["magnitude"], "peft")
    alpha = float(entry["alpha"]) if "alpha" in entry else None
    if "up" in entry and "down" in entry:
        return LoraTerm(entry["up"], entry["down"], alpha, entry.get("mid"))
    if all(f in entry for f in ("w1a", "w1b", "w2a", "w2b")):
        return LohaTerm(entry["w1a"], entry["w1b"], entry["w2a"], entry["w2b"], alpha, entry.get("t1"),
                        entry.get("t2"))
    if ("k1" in entry or "k1a" in entry) and ("k2" in entry or "k2a" in entry):
        return LokrTerm(entry.get("k1"), entry.get("k1a"), entry.get("k1b"), entry.get("k2"), entry.get("k2a"),
                        entry.get("k2b"), alpha, entry.get("kt2"))
    if "diff" in entry:
        return FullTerm(entry["diff"])
    raise LoraFileError(f"{name} is damaged: module {key} has only {', '.join(sorted(entry))} weights.")


def load_lora(path: str | Path) -> LoraFile:
    """Parse a LoRA file into terms (CPU, the file's dtype)."""
    path = Path(path)
    if not path.is_file():
        raise LoraFileError(f"LoRA file {path} does not exist.")
    return parse_lora(_read(path), str(path))


def parse_lora(tensors: dict[str, torch.Tensor], source: str) -> LoraFile:
    """Parse LoRA tensors (any of the layouts above) into terms; ``source`` names them in messages."""
    path = Path(source)
    entries: dict[tuple[str, str], dict] = {}
    skipped = []
    for key, value in tensors.items():
        split = _split_key(key)
        if split is None:
            skipped.append(key)
            continue
        part, module, kind = split
        entries.setdefault((part, module), {})[kind] = value
    if not entries:
        raise LoraFileError(
            f"{path.name} is not a LoRA file: none of its {len(tensors)} keys is a LoRA weight "
            "(expected kohya lora_unet_/lora_te_ keys or diffusers unet./text_encoder. keys with lora_A/lora_B).")
    terms = {k: _term(e, f"{k[0]}:{k[1]}", path.name) for k, e in entries.items()}
    keys = list(tensors)
    if any(k.startswith(tuple(p for p, _ in KOHYA_PREFIXES)) for k in keys):
        lyco = any(isinstance(getattr(t, "inner", t), (LohaTerm, LokrTerm)) for t in terms.values())
        fmt = "lycoris" if lyco else "kohya"
    else:
        fmt = "peft"
    return LoraFile(source, fmt, terms, tuple(skipped))


def inspect_lora(path: Path) -> list[str]:
    """Sentences for why ``path`` cannot serve as a LoRA (validation: a safetensors header read only)."""
    if path.suffix.lower() != ".safetensors":
        try:
            load_lora(path)
        except LoraFileError as exc:
            return [str(exc)]
        return []
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = list(f.keys())
    except Exception as exc:
        return [f"{path.name} could not be read as a safetensors file ({exc.__class__.__name__})."]
    if not any(_split_key(k) for k in keys):
        return [f"{path.name} is not a LoRA file: none of its {len(keys)} keys is a LoRA weight "
                "(expected kohya lora_unet_/lora_te_ keys or diffusers unet./text_encoder. keys with lora_A/lora_B)."]
    return []


# -- matching modules to a model's weights -------------------------------------------------------------------

def unet_weight_names(unet) -> dict[str, str]:
    """Flattened module name (diffusers AND original LDM naming) -> UNet parameter name of its weight."""
    params = dict(unet.named_parameters())
    out = {}
    for name in params:
        if name.endswith(".weight"):
            out[flat(name[: -len(".weight")])] = name
    try:
        ldm = unet_to_original({k: k for k in params}, unet.config)
    except ValueError:  # a UNet layout without an original naming: diffusers names only
        ldm = {}
    for ldm_name, name in ldm.items():
        if ldm_name.endswith(".weight"):
            out.setdefault(flat(ldm_name[: -len(".weight")]), name)
    return out


def clip_weight_names(text_encoders) -> dict[str, dict[str, str]]:
    """Per part (te0, te1): flattened module name -> ``"i:parameter"`` name of its weight."""
    out: dict[str, dict[str, str]] = {}
    for i, enc in enumerate(text_encoders):
        names = {}
        for name, _ in enc.named_parameters():
            if name.endswith(".weight"):
                module = name[: -len(".weight")]
                names[flat(module)] = f"{i}:{name}"
                if not module.startswith("text_model."):  # a flattened CLIPTextModel: also the usual names
                    names[flat("text_model." + module)] = f"{i}:{name}"
        out[f"te{i}"] = names
    return out


def term_fits(term, shape: torch.Size) -> bool:
    """Whether the term's Δ has the weight's shape (checked from the factors, nothing is computed)."""
    numel = shape.numel()
    if isinstance(term, DoraTerm):
        return term.fits(shape) and term_fits(term.inner, shape)
    if isinstance(term, LoraTerm):
        if term.up.shape[0] != shape[0]:
            return False
        if term.mid is not None:
            return term.down.shape[1] * term.mid.shape[2] * term.mid.shape[3] * shape[0] == numel
        return term.up.shape[0] * term.down[0].numel() == numel
    if isinstance(term, LohaTerm):
        return term.t1 is not None or term.w1a.shape[0] * term.w1b.shape[1] == numel
    if isinstance(term, LokrTerm):
        a = term.w1 if term.w1 is not None else term.w1a
        b = term.w2 if term.w2 is not None else term.w2a
        return a.shape[0] * b.shape[0] == shape[0]
    if isinstance(term, FullTerm):
        return term.delta.numel() == numel
    return True
