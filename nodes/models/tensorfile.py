"""Reading weight files with one copy of the weights in memory, and building modules without random init.

Why not ``safetensors.torch.load_file``: it memory-maps the file, and the tensors sit at whatever offset the
writer left (most are not 64-byte aligned). CPU kernels take other code paths for unaligned weights (results
then differ in the last bits from the same weights in ordinary memory), so the loader used to copy every
unaligned tensor: two copies of the file (mapped pages + copies) at the peak. Here each tensor is read straight
from the file into a fresh 64-byte-aligned tensor (``readinto``), converted to the target dtype one tensor at a
time when asked; the page cache is not part of the process's memory, so the peak is the weights once.

Why meta-device modules: ``Model(config)`` initialises every weight randomly (20 s for ViT-H on a CPU) only for
the loader to overwrite it. :func:`materialize` builds the module with empty (meta) parameters, then takes the
loaded tensors by assignment; buffers that are not in files (``position_ids``...) are built by the
constructor as usual.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from .probe import MAX_HEADER_BYTES

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
    "F8_E5M2": getattr(torch, "float8_e5m2", None),
}


class TensorFileError(ValueError):
    """A safetensors file whose header or data cannot be read (corrupt, truncated, unknown dtype)."""


def read_header(path: str | Path) -> tuple[dict, dict, int]:
    """(tensor entries, metadata, byte offset of the data section) of a safetensors file."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise TensorFileError("the file is too short to be safetensors")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES:
            raise TensorFileError(f"the header claims {length} bytes")
        try:
            header = json.loads(f.read(length))
        except ValueError as e:
            raise TensorFileError(f"the header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise TensorFileError("the header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    return header, meta, 8 + length


def read_safetensors(path: str | Path, dtype: torch.dtype | None = None,
                     keep: Callable[[str], bool] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """All tensors (those whose name passes ``keep``) and the metadata of a safetensors file.

    Each tensor lands in its own aligned CPU memory; floating tensors are converted to ``dtype`` as they are
    read (so a float16 file for a float32 runtime never holds both), others keep their type.
    """
    entries, meta, start = read_header(path)
    size = Path(path).stat().st_size
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb", buffering=0) as f:
        for name, e in sorted(entries.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if keep is not None and not keep(name):
                continue
            try:
                src = _DTYPES[e["dtype"]]
                shape = [int(s) for s in e["shape"]]
                begin, end = (int(o) for o in e["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise TensorFileError(f"tensor {name!r} has a malformed header entry") from None
            if src is None:
                raise TensorFileError(f"tensor {name!r} has dtype {e['dtype']}, which this torch lacks")
            numel = 1
            for s in shape:
                numel *= s
            nbytes = numel * torch.empty((), dtype=src).element_size()
            if end - begin != nbytes or start + end > size:
                raise TensorFileError(f"tensor {name!r} lies outside the file (truncated?)")
            t = torch.empty(shape, dtype=src)
            if nbytes:
                f.seek(start + begin)
                view = memoryview(t.view(-1).view(torch.uint8).numpy())
                got = f.readinto(view)
                while got < nbytes:  # readinto may return short counts on large reads
                    more = f.readinto(view[got:])
                    if not more:
                        raise TensorFileError(f"tensor {name!r} lies outside the file (truncated?)")
                    got += more
            if dtype is not None and t.is_floating_point() and t.dtype != dtype:
                t = t.to(dtype)
            out[name] = t
    return out, meta


class WeightsMismatch(ValueError):
    """The tensors do not fit the module built for them; ``missing``/``unexpected`` name a few keys."""

    def __init__(self, missing: Iterable[str], unexpected: Iterable[str]) -> None:
        self.missing, self.unexpected = sorted(missing), sorted(unexpected)
        super().__init__(f"missing {self.missing[:3]}, unexpected {self.unexpected[:3]}")


def _aligned(v: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Cast, or copy a tensor that is not 64-byte aligned (a slice of a fused matrix, a mapped file)."""
    if dtype is not None and v.is_floating_point() and v.dtype != dtype:
        return v.to(dtype)
    return v.clone() if v.data_ptr() % 64 else v


def empty_module(make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``make()`` with parameters on the meta device (no memory, no random init); buffers are real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return make()


def assign(model: torch.nn.Module, sd: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Give ``model`` the tensors of ``sd`` by assignment (strict: same names, same shapes).

    Tensors already in ``dtype`` and aligned are used as they are (no copy). The module comes back in eval
    mode with gradients off; floating buffers the constructor made follow ``dtype``.
    """
    own = model.state_dict()
    missing, unexpected = set(own) - set(sd), set(sd) - set(own)
    if missing or unexpected:
        raise WeightsMismatch(missing, unexpected)
    sd = dict(sd)
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"size mismatch for {k}: the file has {list(v.shape)}, the model {list(own[k].shape)}")
        sd[k] = _aligned(v, dtype)
    model.load_state_dict(sd, strict=True, assign=True)
    if dtype is not None:  # float buffers the constructor made (not in the file) follow the weights
        for module in model.modules():
            for name, buf in module._buffers.items():
                if buf is not None and buf.is_floating_point() and buf.dtype != dtype:
                    module._buffers[name] = buf.to(dtype)
    return model.eval().requires_grad_(False)


def materialize(make: Callable[[], torch.nn.Module], sd: dict[str, torch.Tensor],
                dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Build ``make()`` with meta parameters (no random init), then take ``sd`` by assignment (strict)."""
    return assign(empty_module(make), sd, dtype)
