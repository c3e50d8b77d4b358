"""What training writes and reads: h94 adapter files, training states, and conversion of the reference
scripts' checkpoints.

* Adapter: ``.safetensors`` with flat ``image_proj.*`` / ``ip_adapter.N.to_k_ip|to_v_ip.weight`` keys (the
  layout ipgraph's IPAdapterModelLoader, diffusers' ``load_ip_adapter`` and ComfyUI_IPAdapter_plus read) and
  string metadata: ``base_model``, ``image_encoder``, ``variant``, ``arch``, ``num_tokens``, ``steps``.
* Training state (``NAME.trainstate``): ``torch.save`` of plain tensors, numbers and strings (adapter and
  optimizer state dicts, step, losses, the run's settings as JSON), read back with ``weights_only=True``.
* Reference checkpoints: ``accelerator.save_state`` of the tutorial scripts saves the whole ``IPAdapter``
  module: ``unet.*`` (dropped), ``image_proj_model.*`` and ``adapter_modules.N.*`` (N counts every attention
  processor, so cross-attention layers are the odd N, exactly the h94 index). Older accelerate wrote
  ``pytorch_model.bin`` (read weights-only); current accelerate writes ``model.safetensors``, sharded with a
  ``model.safetensors.index.json`` when the UNet makes it large (SDXL in fp32), sometimes with a
  ``module.`` prefix from a distributed wrapper. The tutorial's README snippet handles only the first.

Every write goes through a temporary sibling and a rename, after a free-space check: a failed write (disk
full) leaves the previous file as it was.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import torch

from .errors import TrainingError

STATE_FORMAT = "ipgraph-train-state/1"
_CHUNK = 1 << 20


def _write_chunks(f, data: bytes) -> None:
    """Write ``data`` to the open file in chunks (one place a full disk shows up)."""
    view = memoryview(data)
    for start in range(0, len(view), _CHUNK):
        f.write(view[start:start + _CHUNK])


def write_atomic(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` so that either the new file or the old one exists, never half of one."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest.parent).free
    if free < len(data):
        raise TrainingError(f"not enough disk space to write {dest.name}: it needs {len(data) / 1e6:.1f} MB and "
                            f"{dest.parent} has {free / 1e6:.1f} MB free; the previous file is unchanged.")
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            _write_chunks(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        why = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        raise TrainingError(f"could not write {dest.name} ({why}); the previous file is unchanged.") from None


def save_adapter(dest: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write an h94 ``.safetensors`` adapter atomically."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata={k: str(v) for k, v in metadata.items()})
    write_atomic(dest, data)
    return dest


def save_state(dest: Path, state: dict) -> Path:
    """Write a training state (see module docstring) atomically."""
    import io

    buf = io.BytesIO()
    torch.save({"format": STATE_FORMAT, **state}, buf)
    write_atomic(dest, buf.getvalue())
    return dest


def load_state(path: Path) -> dict:
    """Read a training state written by :func:`save_state` (weights-only: a hostile file cannot run code)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"the training state {path} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, pickled code refused by weights_only
        raise TrainingError(f"{path.name} could not be read as an ipgraph training state "
                            f"({exc.__class__.__name__}).") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path.name} is not an ipgraph training state (written by --save-every or at the "
                            "end of `ipgraph train ipadapter`).")
    return state


# -- the reference scripts' checkpoints -------------------------------------------------------------------

def read_reference_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The flat tensors of a tutorial-script checkpoint: a ``checkpoint-N`` folder, its ``pytorch_model.bin``,
    its ``model.safetensors``, or a shard index."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json"):
            if (path / name).is_file():
                return read_reference_checkpoint(path / name)
        raise TrainingError(f"{path} holds no model.safetensors or pytorch_model.bin (is it a checkpoint-N "
                            "folder written by the reference training script?).")
    if not path.is_file():
        raise TrainingError(f"{path} does not exist.")
    if path.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise TrainingError(f"{path.name} is not a shard index (no weight_map).") from None
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            out.update(read_reference_checkpoint(path.parent / shard))
        return out
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"{path.name} could not be read ({exc.__class__.__name__}); .bin files are read "
                            "weights-only, so a file holding code is refused.") from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise TrainingError(f"{path.name} is not a flat state dict of tensors.")
    return data


def reference_to_h94(flat: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """``image_proj_model.*`` -> ``image_proj.*``, ``adapter_modules.N.*`` -> ``ip_adapter.N.*``; ``unet.*``
    and anything else dropped."""
    out = {}
    for key, value in flat.items():
        key = key.removeprefix("module.")
        for old, new in (("image_proj_model.", "image_proj."), ("adapter_modules.", "ip_adapter.")):
            if key.startswith(old):
                out[new + key[len(old):]] = value.detach().float().contiguous()
    if not any(k.startswith("image_proj.") for k in out) or not any(k.startswith("ip_adapter.") for k in out):
        raise TrainingError(f"{source} has no image_proj_model.* and adapter_modules.* weights: it was not "
                            "written by the IP-Adapter reference training script.")
    return out


def convert_reference(src: Path, dest: Path, metadata: dict[str, str] | None = None):
    """Convert a reference checkpoint to an h94 adapter file; returns the file's ``IPAdapterInfo``."""
    from ..ipadapter.files import IPAdapterFileError, _detect

    tensors = reference_to_h94(read_reference_checkpoint(src), Path(src).name)
    proj = {k[len("image_proj."):]: v.shape for k, v in tensors.items() if k.startswith("image_proj.")}
    ip = {k[len("ip_adapter."):]: v.shape for k, v in tensors.items() if k.startswith("ip_adapter.")}
    try:
        info = _detect(str(dest), proj, ip)
    except IPAdapterFileError as exc:
        raise TrainingError(f"{Path(src).name}: {exc}") from None
    meta = {"variant": info.variant, "arch": info.arch, "num_tokens": str(info.tokens),
            "converted_from": Path(src).name, **(metadata or {})}
    save_adapter(dest, tensors, meta)
    return info
