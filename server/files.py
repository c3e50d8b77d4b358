"""Files the server reads and writes for users: every path is checked to stay inside its folder.

``safe_join`` refuses absolute paths, ``..`` components, backslashes, NUL bytes and drive letters, then resolves
symlinks and checks the result is still inside the (resolved) base. Uploaded images are decoded fully with Pillow
under a pixel limit before anything is written, and saved under the user's own file name (a workflow names the
file it was given: ``photo.jpeg`` stays ``photo.jpeg``): only folder parts, control characters and leading dots
are taken out; a name without an image extension gets the extension of the format Pillow found.
"""

from __future__ import annotations

import hashlib
import io
import re
import unicodedata
import warnings
from pathlib import Path, PurePosixPath

from PIL import Image

ALLOWED_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
        ".gif": "image/gif", ".bmp": "image/bmp", ".json": "application/json"}


class UnsafePath(ValueError):
    """A path that would leave its folder (or is not a plain relative path at all)."""


class BadUpload(ValueError):
    pass


def _parts(rel: str) -> list[str]:
    if rel is None:
        return []
    if not isinstance(rel, str) or "\x00" in rel or "\\" in rel:
        raise UnsafePath("path contains a forbidden character")
    if rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        raise UnsafePath("absolute paths are not allowed")
    parts = [p for p in PurePosixPath(rel).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafePath("'..' is not allowed in a path")
    return parts


def safe_join(base: Path, *pieces: str) -> Path:
    """``base / pieces`` resolved, guaranteed inside ``base`` (symlinks included)."""
    root = Path(base).resolve()
    parts: list[str] = []
    for piece in pieces:
        parts.extend(_parts(piece or ""))
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise UnsafePath("the path leaves its folder")
    return path


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


def sanitize_filename(name: str, max_len: int = 120) -> str:
    """The last path part of ``name``: no folders, no control characters, no leading dots, limited length."""
    name = unicodedata.normalize("NFC", str(name or ""))
    name = name.replace("\\", "/").split("/")[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().lstrip(".").strip()
    if not name:
        name = "upload"
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    stem = stem[: max_len - len(ext) - 1] or "upload"
    return f"{stem}.{ext}" if ext else stem


def decode_image(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    """Decode fully (not just the header) under a pixel limit; returns (image, Pillow format)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
            fmt = probe.format
            if fmt not in ALLOWED_FORMATS:
                raise BadUpload(f"unsupported image format {fmt!r}; use PNG, JPEG, WEBP, GIF or BMP")
            w, h = probe.size
            if w <= 0 or h <= 0 or w * h > max_pixels:
                raise BadUpload(f"image is {w}x{h} pixels; the limit is {max_pixels} pixels")
            n_frames = getattr(probe, "n_frames", 1)
            if n_frames * w * h > max_pixels * 4:
                raise BadUpload("animated image has too many pixels in total")
            probe.load()
            return probe, fmt
    except BadUpload:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadUpload(f"image rejected as a decompression bomb: {exc}") from None
    except Exception as exc:
        raise BadUpload(f"not a readable image: {type(exc).__name__}: {exc}") from None


def store_upload(folder: Path, subfolder: str, filename: str, data: bytes, max_pixels: int,
                 overwrite: bool = False) -> tuple[str, str]:
    """Validate and write an uploaded image; returns (name, subfolder) as ComfyUI reports them.

    Same name and same content → reuse; same name, other content → ``name (1).ext`` unless ``overwrite``.
    """
    _, fmt = decode_image(data, max_pixels)
    name = sanitize_filename(filename)
    if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
        name += ALLOWED_FORMATS[fmt]
    stem, ext = name[: -len(Path(name).suffix)], Path(name).suffix
    target_dir = safe_join(folder, subfolder)
    target_dir.mkdir(parents=True, exist_ok=True)
    target = safe_join(target_dir, name)
    if target.exists() and not overwrite:
        if target.is_file() and hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest():
            return name, subfolder
        i = 1
        while True:
            name = f"{stem} ({i}){ext}"
            target = safe_join(target_dir, name)
            if not target.exists():
                break
            i += 1
    if target.is_symlink():
        raise UnsafePath("refusing to write through a symlink")
    tmp = target.with_name(f".{target.name}.part")
    tmp.write_bytes(data)
    tmp.replace(target)
    return name, subfolder


def media_type(path: Path) -> str:
    return MIME.get(path.suffix.lower(), "application/octet-stream")


def input_image_path(input_dir: Path, subfolder: str, filename: str) -> Path:
    """An input image as the nodes find it: the input folder first, then the bundled demo assets (what the
    bundled graphs name), so ``/view?type=input`` shows the editor the same file the run will read."""
    path = safe_join(input_dir, subfolder, filename)
    if path.is_file():
        return path
    from ipgraph.graphs import ASSETS_DIR

    bundled = safe_join(ASSETS_DIR, subfolder, filename)
    return bundled if bundled.is_file() and bundled.suffix.lower() in IMAGE_SUFFIXES else path


def list_input_images(input_dir: Path) -> list[str]:
    """The images a LoadImage combo offers: the input folder's and the bundled assets (names not shadowed)."""
    from ipgraph.graphs import ASSETS_DIR

    return sorted(set(list_images(input_dir)) | set(list_images(ASSETS_DIR)))


def list_images(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp") \
                and not p.name.startswith("."):
            out.append(p.relative_to(folder).as_posix())
    return out
