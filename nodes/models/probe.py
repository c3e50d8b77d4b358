"""Cheap structural checks of a model file, for validation: is it a file of the kind its name says at all?

Only headers are read (safetensors: the 8-byte length and the JSON header; pickles: the magic bytes), so a
broken download, an empty file or random bytes are reported before anything is loaded. Whether a pickle
holds more than tensors can only be known by loading it (weights-only, at run time).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .pickles import PICKLE_MAGIC, ZIP_MAGIC

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".ipadpt"}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


def unreadable_reason(path: Path) -> str | None:
    """A sentence when ``path`` cannot be the model file its suffix says, else None. Folders pass."""
    path = Path(path)
    if path.is_dir():
        return None
    suffix = path.suffix.lower()
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if suffix == ".safetensors":
                if size < 8 or len(head) < 8:
                    return f"{path.name} is empty or too short to be a safetensors file"
                (length,) = struct.unpack("<Q", head)
                if length > min(MAX_HEADER_BYTES, size - 8):
                    return (f"{path.name} is not a readable safetensors file: its header claims {length} bytes "
                            f"but the file has {size} (corrupt or truncated, or not safetensors)")
                header = json.loads(f.read(length))
                ends = [v["data_offsets"][1] for k, v in header.items()
                        if k != "__metadata__" and isinstance(v, dict) and len(v.get("data_offsets", ())) == 2]
                if ends and 8 + length + max(ends) > size:
                    return (f"{path.name} is truncated: its header describes {8 + length + max(ends)} bytes but the "
                            f"file has {size} (an interrupted download?)")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"{path.name} could not be read: it is not a readable safetensors file ({type(exc).__name__}); it may be corrupt"
    if suffix in PICKLE_SUFFIXES and suffix != ".ipadpt" and not (head.startswith(ZIP_MAGIC) or
                                                                 head.startswith(PICKLE_MAGIC)):
        return f"{path.name} is not a PyTorch file: its first bytes are neither a zip archive nor a pickle"
    return None
