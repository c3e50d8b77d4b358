"""Weight patches: changes to named weights of a MODEL's UNet or a CLIP's text encoders (LoRA, merges).

Why fused, into a cached copy: a :class:`WeightPatch` only *describes* ``w ← m·w + s·Δ`` per weight (m =
``strength_model``, s = ``strength_patch``, Δ one of the terms below). While KSampler samples (or
CLIPTextEncode encodes), the installer swaps patched weights in (``param.data = patched``) and swaps the
untouched original tensors back on exit, so undoing is exact (A-B-A bit-identical) and sampling runs at the
speed of a fused model (unfused peft-style layers cost every step). The patched weights are computed in
float32 from the originals once per patch set and kept for the last set used on each model (one slot per
model, replaced on a switch), so sampling again with the same LoRAs costs nothing and switching costs one
fuse, never a reload, with memory flat over any number of switches. bench/bench_lora.py measures both
(fuse every call vs the cached copy) against diffusers' unfused layers and ``fuse_lora``.

Patches of one handle are applied in handle order, like ComfyUI's ``calculate_weight``: for each patch that
names the weight, first ``w ← m·w`` (when m ≠ 1), then ``w ← w + s·Δ``.

Terms (r = rank, α = the file's alpha, α/r = 1 when the file has no alpha):

* :class:`LoraTerm` (LoRA, LoCon): ``Δ = α/r · up @ down`` (conv: flattened, reshaped to the weight;
  with a Tucker ``mid``: ``down`` is first contracted with ``mid``).
* :class:`LohaTerm` (LyCORIS LoHa): ``Δ = α/r · (w1a @ w1b) ⊙ (w2a @ w2b)`` (r = ``w1b`` rows).
* :class:`LokrTerm` (LyCORIS LoKr): ``Δ = α/r · kron(w1, w2)``, each factor whole or ``a @ b`` (α/r = 1 when
  neither factor is decomposed).
* :class:`FullTerm`: ``Δ`` stored whole (``.diff`` keys).
* :class:`WeightOf`: another model's weight (model merges), that model's own weight patches included.
* :class:`DoraTerm` (DoRA, weight-decomposed LoRA): not a plain ``Δ`` but a rewrite of ``w`` around any of the
  terms above (``inner``, its Δ with α/r included), see the class for the two conventions.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..core.patches import patch_installer


def _scale(alpha: float | None, rank: int) -> float:
    return 1.0 if alpha is None else float(alpha) / rank


@dataclass(frozen=True, eq=False)
class LoraTerm:
    up: torch.Tensor  # [out, r] or [out, r, 1, 1]
    down: torch.Tensor  # [r, in] or [r, in, kh, kw]
    alpha: float | None = None
    mid: torch.Tensor | None = None  # Tucker core [r, r, kh, kw] (LoCon with conv_dim decomposition)

    def diff(self, shape: torch.Size, device, dtype=torch.float32) -> torch.Tensor:
        up, down = self.up.to(device, dtype), self.down.to(device, dtype)
        if self.mid is not None:
            mid = self.mid.to(device, dtype)
            final = [down.shape[1], down.shape[0], mid.shape[2], mid.shape[3]]
            down = torch.mm(down.transpose(0, 1).flatten(1), mid.transpose(0, 1).flatten(1))
            down = down.reshape(final).transpose(0, 1)
        rank = self.down.shape[0]
        out = torch.mm(up.flatten(1), down.flatten(1))
        return (out * _scale(self.alpha, rank)).reshape(shape)


@dataclass(frozen=True, eq=False)
class LohaTerm:
    w1a: torch.Tensor
    w1b: torch.Tensor
    w2a: torch.Tensor
    w2b: torch.Tensor
    alpha: float | None = None
    t1: torch.Tensor | None = None
    t2: torch.Tensor | None = None

    def diff(self, shape: torch.Size, device, dtype=torch.float32) -> torch.Tensor:
        f = [t.to(device, dtype) if t is not None else None for t in (self.w1a, self.w1b, self.w2a, self.w2b,
                                                                        self.t1, self.t2)]
        w1a, w1b, w2a, w2b, t1, t2 = f
        if t1 is not None:  # Tucker: ComfyUI's einsum form
            m1 = torch.einsum("i j k l, j r, i p -> p r k l", t1, w1b, w1a)
            m2 = torch.einsum("i j k l, j r, i p -> p r k l", t2, w2b, w2a)
        else:
            m1, m2 = torch.mm(w1a, w1b), torch.mm(w2a, w2b)
        return (m1 * m2 * _scale(self.alpha, self.w1b.shape[0])).reshape(shape)


@dataclass(frozen=True, eq=False)
class LokrTerm:
    w1: torch.Tensor | None = None
    w1a: torch.Tensor | None = None
    w1b: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    w2a: torch.Tensor | None = None
    w2b: torch.Tensor | None = None
    alpha: float | None = None
    t2: torch.Tensor | None = None

    def diff(self, shape: torch.Size, device, dtype=torch.float32) -> torch.Tensor:
        def get(t):
            return None if t is None else t.to(device, dtype)

        w1, w2, dim = get(self.w1), get(self.w2), None
        if w1 is None:
            dim = self.w1b.shape[0]
            w1 = torch.mm(get(self.w1a), get(self.w1b))
        if w2 is None:
            dim = self.w2b.shape[0]
            if self.t2 is None:
                w2 = torch.mm(get(self.w2a), get(self.w2b))
            else:
                w2 = torch.einsum("i j k l, j r, i p -> p r k l", get(self.t2), get(self.w2b), get(self.w2a))
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        scale = float(self.alpha) / dim if (self.alpha is not None and dim is not None) else 1.0
        return (torch.kron(w1, w2) * scale).reshape(shape)


@dataclass(frozen=True, eq=False)
class FullTerm:
    delta: torch.Tensor

    def diff(self, shape: torch.Size, device, dtype=torch.float32) -> torch.Tensor:
        return self.delta.to(device, dtype).reshape(shape)


@dataclass(frozen=True, eq=False)
class DoraTerm:
    """DoRA: the direction of ``w + Δ`` renormalised to a learned magnitude ``m``.

    With ``V = w + s_in·Δ`` (Δ = ``inner``'s difference, α/r included) and ``‖V‖`` the L2 norm taken over every
    axis but one (the ``norm_axis``), the DoRA weight is ``D = m · V / ‖V‖`` (broadcast along ``norm_axis``).
    Two conventions exist and both are what their loaders do, so both are kept exactly:

    * ``style="comfy"``: kohya / LyCORIS files (``<module>.dora_scale``), as ComfyUI's ``weight_decompose``:
      ``s_in = 1`` and the strength ``s`` interpolates outside, ``w' = w + s·(D − w)``. The magnitude's shape
      says the axis: ``[1, in, ...]`` (LyCORIS' default, and the only form ComfyUI reads) is a norm per input
      channel (over axis 0 and the kernel axes); ``[out, 1, ...]`` / ``[out]`` (LyCORIS ``wd_on_out``) per
      output channel.
    * ``style="peft"``: diffusers / peft files (``<module>.lora_magnitude_vector``, shape ``[out]``), as peft's
      ``merge`` (what diffusers' ``fuse_lora`` runs): the strength scales Δ inside, ``s_in = s``, ``w' = D``,
      the norm is per output channel.

    At strength 1 the two agree; at strength 0 ``w`` is unchanged in both.
    """

    inner: Any
    magnitude: torch.Tensor
    style: str = "comfy"  # "comfy" | "peft"

    def output_axis(self, shape: torch.Size) -> bool:
        """Whether the magnitude runs along the output channels (axis 0) rather than the inputs (axis 1)."""
        m = self.magnitude
        return self.style == "peft" or m.ndim == 1 or m.shape[0] != 1

    def fits(self, shape: torch.Size) -> bool:
        n = self.magnitude.numel()
        return n == (shape[0] if self.output_axis(shape) else (shape[1] if len(shape) > 1 else -1))

    def apply(self, w: torch.Tensor, strength: float, device) -> torch.Tensor:
        delta = self.inner.diff(w.shape, device)
        v = w + (strength if self.style == "peft" else 1.0) * delta
        if self.output_axis(w.shape):
            norm = v.reshape(v.shape[0], -1).norm(dim=1).reshape(v.shape[0], *[1] * (v.ndim - 1))
            mag = self.magnitude.to(device, torch.float32).reshape(v.shape[0], *[1] * (v.ndim - 1))
        else:
            norm = v.transpose(0, 1).reshape(v.shape[1], -1).norm(dim=1)
            norm = norm.reshape(1, v.shape[1], *[1] * (v.ndim - 2))
            mag = self.magnitude.to(device, torch.float32).reshape(1, v.shape[1], *[1] * (v.ndim - 2))
        dora = v * (mag / norm)
        if self.style == "peft" or strength == 1.0:
            return dora
        return w + strength * (dora - w)


@dataclass(frozen=True, eq=False)
class WeightOf:
    """Weight ``name`` of another target (a UNet or a tuple of text encoders) with that target's patches."""

    target: Any
    name: str
    patches: tuple = ()

    def diff(self, shape: torch.Size, device, dtype=torch.float32) -> torch.Tensor:
        param = named_weights(self.target)[self.name]
        return patched_weight(param.data, self.name, self.patches, device, dtype).reshape(shape)


@dataclass(frozen=True, eq=False)
class WeightPatch:
    """``w ← strength_model·w + strength_patch·Δ`` for every weight named in ``terms``.

    ``terms`` keys are parameter names of the target: the UNet's own (``down_blocks.0...to_q.weight``) or, for
    a CLIP, ``"<encoder index>:<parameter name>"`` (``0:text_model.encoder.layers.0.self_attn.q_proj.weight``).
    """

    terms: Mapping[str, Any]
    strength_patch: float = 1.0
    strength_model: float = 1.0
    source: str = ""  # the file or model it came from, for messages

    def cache_nbytes(self) -> int:
        return 0  # the tensors belong to the loaded LoRA / model, accounted for by the model manager


def named_weights(target: Any) -> dict[str, torch.nn.Parameter]:
    """Parameters of a UNet by name, or of a tuple of text encoders as ``"i:name"``."""
    if isinstance(target, torch.nn.Module):
        return dict(target.named_parameters())
    return {f"{i}:{n}": p for i, enc in enumerate(target) for n, p in enc.named_parameters()}


def patched_weight(weight: torch.Tensor, name: str, patches, device=None, dtype=torch.float32) -> torch.Tensor:
    """``weight`` with every patch in ``patches`` that names it applied in order (float32 math)."""
    device = weight.device if device is None else device
    w = weight.to(device=device, dtype=torch.float32)
    for patch in patches:
        term = patch.terms.get(name) if isinstance(patch, WeightPatch) else None
        if term is None:
            continue
        if patch.strength_model != 1.0:
            w = w * patch.strength_model
        if patch.strength_patch == 0.0:
            continue
        if isinstance(term, DoraTerm):
            w = term.apply(w, patch.strength_patch, device)
        else:
            w = w + patch.strength_patch * term.diff(w.shape, device)
    return w.to(dtype)


# The fused weights of the last patch set installed on each target, so that sampling again with the same
# LoRAs (a new seed, the next queued prompt) costs nothing: one entry per loaded UNet / CLIP, replaced (never
# added to) when another set is installed, dropped with the model.
_FUSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _owner(target: Any) -> torch.nn.Module:
    return target if isinstance(target, torch.nn.Module) else target[0]


def _key(patches: list, params: dict, names: list[str]) -> tuple:
    """Which patches, on which original tensors (a model moved to another device is fused again)."""
    return (tuple(id(p) for p in patches),
            tuple((n, params[n].data_ptr(), str(params[n].device), params[n].dtype) for n in names))


@contextmanager
def weights_installed(target: Any, patches):
    """Swap the patched weights into ``target`` for the block; the original tensors come back after."""
    patches = [p for p in patches if isinstance(p, WeightPatch)]
    params = named_weights(target)
    names = list(dict.fromkeys(n for p in patches for n in p.terms))
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"a weight patch names {len(missing)} weights this model does not have "
                         f"(first: {missing[0]}); it was made for another model.")
    if not names:
        yield target
        return
    owner, key = _owner(target), _key(patches, params, names)
    cached = _FUSED.get(owner)
    if cached is None or cached[0] != key:
        _FUSED.pop(owner, None)  # free the previous set's copies before making the new ones
        with torch.no_grad():
            fused = {n: patched_weight(params[n].data, n, patches, params[n].device, params[n].dtype)
                     for n in names}
        cached = (key, fused, tuple(patches))  # the patches are kept alive so that their ids stay unique
        _FUSED[owner] = cached
    originals = {}
    try:
        for n in names:
            originals[n] = params[n].data
            params[n].data = cached[1][n]
        yield target
    finally:
        for n, data in originals.items():
            params[n].data = data


@patch_installer(WeightPatch)
def install_weight_patches(unet, patches, state):
    """The MODEL installer (KSampler) and the CLIP one (text encoding) are the same swap."""
    return weights_installed(unet, patches)
