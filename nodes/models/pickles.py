"""The one way pickled model files (``.ckpt``, ``.bin``, ``.pt``, ``.pth``) are opened: weights-only.

Model files are untrusted, so a pickle is never unpickled with code: ``torch.load(weights_only=True)`` only.
What goes wrong is told apart for the user: a file that is not a PyTorch file at all (random bytes, an HTML
error page saved as .ckpt), a truncated or corrupt archive, and a pickle that really holds more than tensors
(code or arbitrary objects) — refused, with no advice to turn the safety off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
PICKLE_MAGIC = b"\x80"  # legacy torch.save: a pickle protocol 2+ header


class PickleFileError(ValueError):
    """A pickled file that could not (or must not) be loaded; the message is a sentence for the user."""


def load_weights_only(path: str | Path, what: str = "model file", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with failures turned into sentences naming the file.

    ``mmap``: map a zip-format file instead of reading it (tensors are paged in on use, storages are 64-byte
    aligned by ``torch.save``), so the caller can convert or assign them without holding two copies."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise PickleFileError(f"{path.name}: the {what} could not be opened ({exc.strerror or exc}).") from None
    if not (head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_MAGIC)):
        raise PickleFileError(f"{path.name} is not a PyTorch {what}: its first bytes are neither a zip archive "
                              "nor a pickle (a failed download or another kind of file?).")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True,
                          mmap=mmap and head.startswith(ZIP_MAGIC))
    except Exception as exc:
        message = str(exc)
        if "Weights only load failed" in message or "Unsupported global" in message:
            raise PickleFileError(
                f"{path.name} is a pickle that holds more than plain tensors (code or arbitrary objects), so it "
                f"was refused: pickled files are only ever loaded weights-only. Use a .safetensors version of "
                f"the {what}.") from None
        first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
        raise PickleFileError(f"{path.name} could not be read as a PyTorch {what}; it is probably truncated or "
                              f"corrupt ({first[:200]}).") from None
