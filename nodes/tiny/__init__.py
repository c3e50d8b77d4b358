"""Every bundled tiny model, in one place: written on first use so the demo and the tests run anywhere, offline.

They are random-weight models in the real architectures and file formats, loaded through exactly the code
path real files take: ``sd`` (SD1.5 / SDXL checkpoints, VAEs, diffusers folders), ``ipadapter`` (CLIP vision
encoders, h94 IP-Adapter files), ``controlnet`` (original-layout files and diffusers folders), ``upscale`` (a
Real-ESRGAN x4 .pth), ``animatediff`` (motion modules, both layouts). ``common``
holds what the writers share. New families add their writer here and a line to :func:`write_all`.
"""

from __future__ import annotations

import threading
from pathlib import Path

_lock = threading.Lock()


def write_all(models_dir: Path) -> list[Path]:
    """Write (or confirm) every tiny model; returns their paths. Files already written are left alone."""
    from .animatediff import write_tiny_motion_modules
    from .controlnet import write_tiny_controlnets
    from .faceid import write_tiny_faceid
    from .insightface import write_tiny_insightface
    from .ipadapter import (
        tiny_ipadapter_paths,
        tiny_ipadapters_fresh,
        tiny_preset_ipadapter_paths,
        write_tiny_clip_vision,
        write_tiny_ipadapters,
        write_tiny_preset_ipadapters,
    )
    from .lora import write_tiny_loras
    from .sd import build_tiny, ensure_tiny_models
    from .upscale import write_tiny_upscale_models

    with _lock:
        paths = list(ensure_tiny_models(models_dir).values())
        paths += list(write_tiny_clip_vision(models_dir).values())
        built = _BuiltOnUse(build_tiny)
        unets = _UNetsOnUse(built)
        presets = tiny_preset_ipadapter_paths(models_dir)
        if tiny_ipadapters_fresh(models_dir) and all(p.exists() for p in presets.values()):
            paths += list(tiny_ipadapter_paths(models_dir).values()) + list(presets.values())
        else:
            unets = {kind: built[kind]["unet"] for kind in ("sd15", "sdxl")}  # iterated by the writers
            paths += list(write_tiny_ipadapters(models_dir, unets).values())
            paths += list(write_tiny_preset_ipadapters(models_dir, unets).values())
        paths += list(write_tiny_controlnets(models_dir).values())
        paths += list(write_tiny_upscale_models(models_dir).values())
        paths += list(write_tiny_motion_modules(models_dir).values())
        paths += list(write_tiny_loras(models_dir, built).values())
        paths += list(write_tiny_faceid(models_dir, unets).values())
        paths += list(write_tiny_insightface(models_dir).values())
    return paths


class _BuiltOnUse(dict):
    """``build_tiny(kind)`` made on first lookup: when every file is already written, nothing is built."""

    def __init__(self, build) -> None:
        super().__init__()
        self._build = build

    def __missing__(self, kind: str):
        self[kind] = self._build(kind)
        return self[kind]


class _UNetsOnUse(dict):
    def __init__(self, built: _BuiltOnUse) -> None:
        super().__init__()
        self._built = built

    def __missing__(self, kind: str):
        self[kind] = self._built[kind]["unet"]
        return self[kind]


def ensure_for_graph(graph, runtime) -> None:
    """Create the tiny models if the graph names one that is missing (the embedded default)."""
    for entry in graph.nodes.values():
        for value in entry.inputs.values():
            if isinstance(value, str) and value.startswith("tiny-") and not _exists(runtime, value):
                write_all(runtime.models_dir)
                return


def _exists(runtime, name: str) -> bool:
    """A tiny file is already there: in a model folder, or a bundled asset (the tiny embeds)."""
    from ipgraph.graphs import ASSETS_DIR

    from ..core.runtime import MODEL_KINDS

    return (ASSETS_DIR / name).exists() or any((runtime.models_dir / kind / name).exists() for kind in MODEL_KINDS)
