"""What every tiny-model writer shares: building under a fixed seed, and atomic writes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch


def seeded(seed: int, make):
    """Call ``make()`` under a fixed seed without disturbing the caller's global RNG; a module it returns is
    put in eval mode without gradients."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        made = make()
    if isinstance(made, torch.nn.Module):
        made.eval().requires_grad_(False)
    return made


def atomic_write(dest: Path, write) -> None:
    """Write through a temporary sibling then rename, so concurrent writers never expose half a file."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    write(tmp)
    if tmp.is_file():
        tmp.chmod(0o644)  # safetensors creates files readable by the owner only
    if dest.is_dir():
        shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def is_fresh(marker: Path, version: int, paths) -> bool:
    """True when ``marker`` records this generator ``version`` and every path exists: nothing to write."""
    try:
        stamp = json.loads(Path(marker).read_text() or "{}")
    except (OSError, ValueError):
        return False
    return stamp == {"generator_version": version} and all(Path(p).exists() for p in paths)


def write_marker(marker: Path, version: int) -> None:
    atomic_write(Path(marker), lambda tmp: tmp.write_text(json.dumps({"generator_version": version})))
