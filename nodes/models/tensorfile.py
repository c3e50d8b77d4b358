"""Reading weight files with one copy of the weights in memory, and building modules without random init.

Tensors whose type the runtime keeps are views of the file mapped into memory (``MAP_PRIVATE``), as
``safetensors`` and diffusers do: loading costs no copy, pages are read from the page cache on first use and
are shared with it, and a dropped model frees them. Measured on this project's 2-core machine, real-size SD1.5
(4.27 GB): 0.7 s instead of 8-13 s for reading every tensor into fresh memory, where the first touch of
anonymous pages dominates. Small unaligned tensors are still copied (``COPY_UNALIGNED_BELOW``). Tensors
converted to another dtype (a float16 file for a float32 runtime) are converted one at a time, so the file's
copy and the converted copy of the whole model never coexist. A file must not be truncated in place while a
model from it is loaded (replace it by renaming a new file over it), as with any memory-mapped loader.

Why meta-device modules: ``Model(config)`` initialises every weight randomly (20 s for ViT-H on a CPU) only for
the loader to overwrite it. :func:`materialize` builds the module with empty (meta) parameters, then takes the
loaded tensors by assignment; buffers that are not in files (``position_ids``...) are built by the
constructor as usual.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import struct
import sys
import weakref
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


# storages that are private mappings of a weight file (``read_safetensors``), by storage address: only their
# pages may be given back with MADV_DONTNEED (for such a mapping the kernel re-reads them from the file)
_MAPPED: dict[int, weakref.ref] = {}
_MADV_DONTNEED = 4
# Unaligned tensors smaller than this are copied into aligned memory, larger ones stay mapped. CPU kernels read
# an operand that is not 64-byte aligned down other code paths: small matrix products (a GEMV such as CLIP's
# visual projection, the tiny test models' layers) then differ in the last bits from the same weights in
# ordinary memory, while the large ones pack their weights first. The copies are ~1 % of a real model's bytes
# (39 MB of SD1.5's 4.27 GB) and keep small models bit-identical to the same weights built in memory or read
# from a .bin; the large tensors keep the no-copy load (diffusers maps and uses them as they lie too).
COPY_UNALIGNED_BELOW = 1 << 20


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

    Tensors are views of the mapped file (small unaligned ones are copied: ``COPY_UNALIGNED_BELOW``); floating
    tensors are converted to ``dtype`` as they are read (so a float16 file for a float32 runtime never holds
    both), others keep their type. A tensor at an offset its element size does not divide (a hand-made file) is
    read into its own memory.
    """
    entries, meta, start = read_header(path)
    size = Path(path).stat().st_size
    out: dict[str, torch.Tensor] = {}
    mapped = _map(path, size)
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
        if any(s < 0 for s in shape) or begin < 0:
            raise TensorFileError(f"tensor {name!r} has a malformed header entry")
        numel = 1
        for s in shape:
            numel *= s
        itemsize = torch.empty((), dtype=src).element_size()
        if end - begin != numel * itemsize or start + end > size:
            raise TensorFileError(f"tensor {name!r} lies outside the file (truncated?)")
        at = start + begin
        if numel == 0:
            t = torch.empty(shape, dtype=src)
        elif at % itemsize:  # cannot be viewed as its dtype: its own memory
            t = torch.empty(0, dtype=torch.uint8).set_(mapped, at, [end - begin]).clone().view(src).reshape(shape)
        else:
            t = torch.empty(0, dtype=src).set_(mapped, at // itemsize, shape)
            if at % 64 and end - begin < COPY_UNALIGNED_BELOW:
                t = t.clone()  # 64-byte aligned, as any tensor torch allocates
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        out[name] = t
    return out, meta


def _map(path: str | Path, size: int) -> torch.UntypedStorage | None:
    """The whole file as a private (copy-on-write) mapping, remembered for :func:`release_pages`."""
    if not size:
        return None
    try:
        storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    except RuntimeError as e:  # the file shrank since it was measured, or cannot be mapped
        raise TensorFileError(f"the file could not be mapped ({e})") from None
    for key in [k for k, ref in list(_MAPPED.items()) if ref() is None]:
        _MAPPED.pop(key, None)
    _MAPPED[storage._cdata] = weakref.ref(storage)
    return storage


def release_pages(modules: Iterable[torch.nn.Module]) -> int:
    """Take the resident pages of the modules' file-mapped weights out of the process (``MADV_DONTNEED``);
    the next use maps them again from the page cache (a minor fault per page, no copy, no disk read unless
    the system evicted the file meanwhile). Returns the bytes given back.

    For models used once per job (text and image encoders, the VAE): between uses their weights are not
    part of the process's resident memory. Safe because a mapping is private and weights are never written
    in place (ARCHITECTURE: values are never mutated; LoRA swaps tensors in): what the kernel re-reads is
    what was there. Tensors not mapped from a file (converted dtypes, patched weights, GPU) are left alone.
    """
    if not sys.platform.startswith("linux"):
        return 0
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page, released, done = mmap.PAGESIZE, 0, set()
    for module in modules:
        for t in (*module.parameters(), *module.buffers()):
            if t.device.type != "cpu" or not t.is_contiguous() or t.numel() == 0:
                continue
            storage = t.untyped_storage()
            ref = _MAPPED.get(storage._cdata)
            if ref is None or ref() is not storage:
                continue
            begin = t.data_ptr()
            lo, hi = -(-begin // page) * page, (begin + t.numel() * t.element_size()) // page * page
            if hi > lo and lo not in done and madvise(lo, hi - lo, _MADV_DONTNEED) == 0:
                done.add(lo)
                released += hi - lo
    return released


class WeightsMismatch(ValueError):
    """The tensors do not fit the module built for them; ``missing``/``unexpected`` name a few keys."""

    def __init__(self, missing: Iterable[str], unexpected: Iterable[str]) -> None:
        self.missing, self.unexpected = sorted(missing), sorted(unexpected)
        super().__init__(f"missing {self.missing[:3]}, unexpected {self.unexpected[:3]}")


def _cast(v: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``v`` in ``dtype`` when it is floating and differs (a copy), else ``v`` itself (a view of the file)."""
    if dtype is not None and v.is_floating_point() and v.dtype != dtype:
        return v.to(dtype)
    return v


def empty_module(make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``make()`` with parameters on the meta device (no memory, no random init); buffers are real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return make()


def assign(model: torch.nn.Module, sd: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Give ``model`` the tensors of ``sd`` by assignment (strict: same names, same shapes).

    Tensors already in ``dtype`` are used as they are (no copy). The module comes back in eval
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
        sd[k] = _cast(v, dtype)
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
