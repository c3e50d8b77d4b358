"""Where files are and what hardware to use: the resources object the engine hands to every node.

Folders follow ComfyUI's layout (checkpoints/, vae/, clip_vision/, ipadapter/, controlnet/, embeds/ for image
embeddings, embeddings/ for textual inversions, upscale_models/, animatediff_models/ as
ComfyUI-AnimateDiff-Evolved names it). The models
folder comes from ``--models-dir``, else ``$IPGRAPH_MODELS_DIR``, else ``./models``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ipgraph.graphs import ASSETS_DIR
from ipgraph.limits import Limits

from .manager import file_fingerprint  # noqa: F401  (loaders import it from here)

MODEL_KINDS = (
    "checkpoints", "vae", "clip_vision", "ipadapter", "controlnet", "embeds", "embeddings", "upscale_models",
    "animatediff_models", "loras", "insightface",
)
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".ipadpt", ".npy")


class ModelNotFound(FileNotFoundError):
    pass


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


DTYPES = ("float32", "float16", "bfloat16")


def parse_device(spec) -> torch.device:
    """A torch device from user text, refused with a sentence when it is not one this machine has."""
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{spec!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} was asked for but this machine has no CUDA GPU; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {spec!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{spec!r} is not a supported device; use cpu, cuda or cuda:N")
    return device


def default_ram_budget() -> int:
    """$IPGRAPH_RAM_BUDGET (bytes, or with a K/M/G suffix; 0 = unbounded), else 60% of physical memory."""
    text = os.environ.get("IPGRAPH_RAM_BUDGET", "").strip().upper()
    if text:
        scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
        try:
            return int(float(text.rstrip("KMGB") if scale > 1 else text) * scale)
        except ValueError:
            raise ValueError(f"IPGRAPH_RAM_BUDGET={text!r} is not a size (e.g. 8G, 8589934592)") from None
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.6)
    except (ValueError, OSError, AttributeError):
        return 0


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (what SD checkpoints are made for), fp32 on CPU (fp16 matmuls are slow/unsupported)."""
    return torch.float16 if device.type == "cuda" else torch.float32


@dataclass
class Runtime:
    models_dir: Path
    output_dir: Path
    input_dir: Path
    device: torch.device
    dtype: torch.dtype
    limits: Limits = field(default_factory=Limits)  # image sizes and work a job may ask (see limits.py)
    allow_absolute_paths: bool = True  # the server turns this off: users may only read its input folder
    memory_budget_bytes: int | None = None  # model manager budget on the device; None = automatic
    # RAM bound on loaded model files (least recently used dropped first); None = $IPGRAPH_RAM_BUDGET, else
    # 60% of physical memory; 0 = unbounded
    ram_budget_bytes: int | None = None
    temp_dir: Path | None = None  # PreviewImage files (default: <output_dir>/../temp)
    # UNet and VAE convolutions in torch.channels_last (``--channels-last``, $IPGRAPH_CHANNELS_LAST=1). CPU fp32,
    # mid SD1.5 (bench/bench_speed.py): UNet step ~0.92x, VAE decode ~0.77x the time; latents differ from the
    # default layout by up to ~1e-4 after 10 steps, VAE pixels by ~1e-4: an option, not the default.
    channels_last: bool = False
    extra: dict = field(default_factory=dict)
    _models: object = None
    _caches: list = field(default_factory=list, repr=False)  # output caches of the engines using this runtime

    def __post_init__(self) -> None:
        if self.temp_dir is None:
            self.temp_dir = self.output_dir.parent / "temp"

    @property
    def max_pixels(self) -> int:
        """Largest input image in pixels (``limits.max_pixels``)."""
        return self.limits.max_pixels

    @max_pixels.setter
    def max_pixels(self, value: int) -> None:
        self.limits = replace(self.limits, max_pixels=int(value))

    @classmethod
    def create(cls, models_dir=None, output_dir=None, input_dir=None, device=None, dtype=None,
               **kwargs) -> Runtime:
        models_dir = Path(models_dir or os.environ.get("IPGRAPH_MODELS_DIR") or "models").resolve()
        output_dir = Path(output_dir or os.environ.get("IPGRAPH_OUTPUT_DIR") or "output").resolve()
        input_dir = Path(input_dir or os.environ.get("IPGRAPH_INPUT_DIR") or "input").resolve()
        device = parse_device(device or os.environ.get("IPGRAPH_DEVICE") or default_device())
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
            dtype = getattr(torch, dtype)
        dtype = dtype or default_dtype(device)
        kwargs.setdefault("limits", Limits.create())
        if kwargs.get("channels_last") is None:
            kwargs["channels_last"] = os.environ.get("IPGRAPH_CHANNELS_LAST", "") not in ("", "0", "false")
        return cls(models_dir, output_dir, input_dir, device, dtype, **kwargs)

    @property
    def models(self):
        """The model manager (created on first use so that validation alone never loads torch models)."""
        if self._models is None:
            from .manager import ModelManager

            budget = self.ram_budget_bytes if self.ram_budget_bytes is not None else default_ram_budget()
            self._models = ModelManager(self.device, self.dtype, self.memory_budget_bytes,
                                        max_loaded_bytes=budget or None)
            self._models.on_evict.append(self._prune_caches)
        return self._models

    def prepare(self, *modules) -> None:
        """Put the modules' weights in the memory format the runtime asks for (in place, once: a layout change,
        the values stay the same)."""
        if not self.channels_last:
            return
        for module in modules:
            if module is not None and not getattr(module, "_ipgraph_channels_last", False):
                module.to(memory_format=torch.channels_last)
                module._ipgraph_channels_last = True

    def attach_cache(self, cache) -> None:
        """Called by the engine: cached outputs that hold a model the manager dropped are pruned with it, so
        the memory is really freed (and a later load of that file does not sit beside the old copy)."""
        if not any(c is cache for c in self._caches):
            self._caches.append(cache)

    def _prune_caches(self) -> None:
        models = self._models
        for cache in self._caches:
            cache.discard_where(models.holds_evicted)

    # -- model files ------------------------------------------------------------------------------
    def model_folder(self, kind: str) -> Path:
        if kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {kind!r}")
        return self.models_dir / kind

    def list_models(self, kind: str) -> list[str]:
        """Names a user can pick: files with model suffixes and diffusers folders (model_index.json)."""
        folder = self.model_folder(kind)
        if not folder.is_dir():
            return []
        names = []
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and path.suffix.lower() in MODEL_SUFFIXES and not _inside_diffusers_folder(path, folder):
                names.append(rel)
            elif path.is_dir() and ((path / "model_index.json").exists() or (path / "config.json").exists()):
                if not _inside_diffusers_folder(path, folder):
                    names.append(rel)
        return names

    def model_path(self, kind: str, name: str) -> Path:
        """Resolve a model name inside its kind's folder; never outside it."""
        if not isinstance(name, str) or not name or any(ord(c) < 32 for c in name):
            raise ModelNotFound(f"{name!r} is not a file name (empty, or it holds control characters)")
        folder = self.model_folder(kind).resolve()
        path = (folder / name).resolve()
        if folder not in path.parents and path != folder:
            raise ModelNotFound(f"{name!r} is outside the {kind} folder")
        if not path.exists():
            available = self.list_models(kind)
            listing = ", ".join(available[:20]) if available else "none"
            raise ModelNotFound(f"no {kind} model named {name!r} in {folder} (available: {listing})")
        return path

    def image_path(self, name: str) -> Path:
        """An input image: absolute (CLI only), in the input folder, or one of the bundled demo assets."""
        if not isinstance(name, str) or not name or any(ord(c) < 32 for c in name):
            raise FileNotFoundError(f"{name!r} is not a file name (empty, or it holds control characters)")
        candidate = Path(name)
        if candidate.is_absolute():
            if not self.allow_absolute_paths:
                raise FileNotFoundError(f"absolute paths are not allowed here: {name!r}")
            if candidate.exists():
                return candidate
            raise FileNotFoundError(f"no image file {name!r}")
        for base in (self.input_dir, ASSETS_DIR):
            path = (base / name).resolve()
            if base.resolve() in path.parents and path.is_file():
                return path
        raise FileNotFoundError(f"no image {name!r} in {self.input_dir} or the bundled assets")


def _inside_diffusers_folder(path: Path, root: Path) -> bool:
    for parent in path.parents:
        if parent == root:
            return False
        if (parent / "model_index.json").exists() or (parent / "config.json").exists():
            return True
    return False


