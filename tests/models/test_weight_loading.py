"""One copy of the weights: files mapped (tensors are views, no copy), modules filled by assignment, pages of
once-per-job models given back after use, models dropped under a RAM budget with the cached outputs that hold
them (so the memory really goes)."""

from __future__ import annotations

import gc
import shutil
import sys
import weakref

import pytest
import torch
from safetensors.torch import load_file

from ipgraph.nodes.ipadapter import load_clip_vision
from ipgraph.nodes.models.single_file import CheckpointError, load_checkpoint
from ipgraph.nodes.models.tensorfile import COPY_UNALIGNED_BELOW, TensorFileError, read_safetensors


def test_reader_matches_safetensors_and_maps_the_file(models_dir, tmp_path):
    path = models_dir / "checkpoints" / "tiny-sd15.safetensors"
    want = load_file(str(path))
    got, meta = read_safetensors(path)
    assert got.keys() == want.keys() and "ipgraph" in meta
    size = path.stat().st_size
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
        if got[k].data_ptr() % 64 == 0 and v.numel():  # a view of the mapping, or a small unaligned tensor's copy
            assert got[k].untyped_storage().nbytes() in (size, v.nbytes), k
        elif v.numel():  # left unaligned: a view of the one mapping of the file, only when large
            assert got[k].untyped_storage().nbytes() == size and v.nbytes >= COPY_UNALIGNED_BELOW, k
    assert sum(t.untyped_storage().nbytes() == size for t in got.values()) > 0  # the file is mapped, not read
    half, _ = read_safetensors(path, torch.float16)
    assert all(t.dtype == torch.float16 for t in half.values() if t.is_floating_point())
    assert torch.equal(half["model.diffusion_model.out.2.weight"], want["model.diffusion_model.out.2.weight"].half())

    copy = tmp_path / "copy.safetensors"  # writing to a tensor never reaches the file (a private mapping)
    shutil.copy(path, copy)
    before = copy.read_bytes()
    mine, _ = read_safetensors(copy)
    mine["model.diffusion_model.out.2.weight"].add_(1.0)
    assert copy.read_bytes() == before


def test_a_tensor_at_an_odd_offset_is_read_into_its_own_memory(tmp_path):
    import json
    import struct

    header = {"u": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
              "f": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes([1, 2, 3]) + torch.tensor([1.5, 2.5]).numpy().tobytes())
    got, _ = read_safetensors(path)
    assert got["u"].tolist() == [1, 2, 3] and got["f"].tolist() == [1.5, 2.5]
    assert got["f"].untyped_storage().nbytes() == 8  # its own memory


def _rss() -> int:
    from pathlib import Path

    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_DONTNEED and /proc are Linux's")
def test_pages_of_a_once_per_job_model_leave_the_process_and_come_back_equal(tmp_path):
    from safetensors.torch import save_file

    from ipgraph.nodes.core.manager import ModelManager
    from ipgraph.nodes.models.tensorfile import materialize, release_pages

    path = tmp_path / "wide.safetensors"
    gen = torch.Generator().manual_seed(0)
    save_file({"weight": torch.randn(4096, 4096, generator=gen), "bias": torch.randn(4096, generator=gen)}, path)
    sd, _ = read_safetensors(path)
    layer = materialize(lambda: torch.nn.Linear(4096, 4096), sd)
    x = torch.randn(2, 4096, generator=gen)
    manager = ModelManager(torch.device("cpu"), torch.float32)
    with torch.no_grad():
        first = layer(x)  # every page of the 64 MiB weight is resident now
        resident = _rss()
        with manager.on_device(layer, once_per_job=True):
            again = layer(x)
        given_back = resident - _rss()
        after = layer(x)  # mapped again from the page cache
    assert given_back > 48 * 2**20, given_back
    assert torch.equal(first, again) and torch.equal(first, after)
    converted = materialize(lambda: torch.nn.Linear(4096, 4096, dtype=torch.float16),
                            read_safetensors(path, torch.float16)[0])
    assert release_pages([converted]) == 0  # a converted copy is the process's own memory: left alone


def test_truncated_file_is_named(models_dir, tmp_path):
    src = (models_dir / "checkpoints" / "tiny-sd15.safetensors").read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(src[: len(src) - 100])
    with pytest.raises(TensorFileError, match="truncated"):
        read_safetensors(bad)
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_checkpoint(bad)


def test_checkpoint_in_fp16_is_converted_at_read(models_dir):
    path = models_dir / "checkpoints" / "tiny-sd15.safetensors"
    full, half = load_checkpoint(path), load_checkpoint(path, dtype=torch.float16)
    for a, b in ((full.unet, half.unet), (full.vae, half.vae), (full.text_encoders[0], half.text_encoders[0])):
        sa, sb = a.state_dict(), b.state_dict()
        for k in sa:
            want = sa[k].half() if sa[k].is_floating_point() else sa[k]
            assert sb[k].dtype == want.dtype and torch.equal(sb[k], want), k
    ids = dict(half.text_encoders[0].named_buffers())  # not in files: made by the constructor
    assert any(k.endswith("position_ids") for k in ids)
    assert torch.equal(next(v for k, v in ids.items() if k.endswith("position_ids"))[0, :5], torch.arange(5))
    assert all(not p.is_meta for m in (half.unet, half.vae, *half.text_encoders) for p in m.parameters())


def test_clip_vision_by_assignment_equals_a_constructed_model(models_dir):
    from safetensors import safe_open
    from transformers import CLIPVisionModelWithProjection

    path = models_dir / "clip_vision" / "tiny-clip-vision.safetensors"
    model = load_clip_vision(path)
    ref = CLIPVisionModelWithProjection(model.config).eval()  # the old way: random init, then overwritten
    with safe_open(str(path), framework="pt") as f:
        ref.load_state_dict({k: f.get_tensor(k) for k in f.keys() if not k.endswith("position_ids")})
    pixels = torch.randn(2, 3, model.config.image_size, model.config.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(pixels, output_hidden_states=True), ref(pixels, output_hidden_states=True)
    assert torch.equal(a.image_embeds, b.image_embeds) and torch.equal(a.hidden_states[-2], b.hidden_states[-2])
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    assert load_clip_vision(path, torch.float16).visual_projection.weight.dtype == torch.float16


def _graph(ckpt, seed=1):
    from ipgraph.engine import Graph

    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name=ckpt)
    pos = g.add("CLIPTextEncode", id="pos", clip=ck.clip, text="a bear")
    lat = g.add("EmptyLatentImage", id="lat", width=64, height=64)
    ks = g.add("KSampler", id="ks", model=ck.model, positive=pos.conditioning, negative=pos.conditioning,
               latent_image=lat.latent, seed=seed, steps=2, cfg=5.0)
    dec = g.add("VAEDecode", id="dec", samples=ks.latent, vae=ck.vae)
    g.add("PreviewImage", id="show", images=dec.image)
    return g


@pytest.mark.slow
def test_alternating_checkpoints_under_a_ram_budget_keep_one_loaded(models_dir, tmp_path):
    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine
    from ipgraph.nodes.core.runtime import Runtime

    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("a.safetensors", "b.safetensors"):
        shutil.copy(models_dir / "checkpoints" / "tiny-sd15.safetensors", folder / name)
    size = (folder / "a.safetensors").stat().st_size
    runtime = Runtime.create(models_dir=tmp_path / "models", output_dir=tmp_path / "out", input_dir=tmp_path / "in",
                             device="cpu", dtype="float32", ram_budget_bytes=int(size * 1.5))
    engine = Engine(REGISTRY, runtime)
    first = engine.run(_graph("a.safetensors")).outputs["dec"].IMAGE  # the run result holds the models too
    unet_a = weakref.ref(runtime.models._loaded[next(iter(runtime.models._loaded))].value.unet)
    engine.run(_graph("b.safetensors"))
    gc.collect()
    assert unet_a() is None  # A was dropped from the manager AND from the cached LoadCheckpoint outputs
    assert runtime.models.stats()["loaded"] == 1
    again = engine.run(_graph("a.safetensors"))
    assert runtime.models.loads == 3 and runtime.models.stats()["loaded"] == 1
    assert torch.equal(first, again.outputs["dec"].IMAGE)
    del again
    runtime.models.clear()  # what POST /free {"unload_models": true} does
    assert runtime.models.stats()["loaded"] == 0
    assert not any(runtime.models.holds_evicted(e.outputs) for e in engine.cache._entries.values())


def test_a_model_file_replaced_under_its_name_is_loaded_again(models_dir, tmp_path):
    """As ComfyUI reads the file each time its loader runs: a new file renamed over the old one (as downloaders
    write) is what the next run uses, and the old model is dropped rather than kept beside it."""
    import os

    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY, Engine, Graph
    from ipgraph.nodes.core.runtime import Runtime

    folder = tmp_path / "models" / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copy(models_dir / "checkpoints" / "tiny-sd15.safetensors", folder / "model.safetensors")
    runtime = Runtime.create(models_dir=tmp_path / "models", output_dir=tmp_path / "out", input_dir=tmp_path / "in",
                             device="cpu", dtype="float32")
    engine = Engine(REGISTRY, runtime)
    graph = Graph()
    graph.add("LoadCheckpoint", id="ckpt", name="model.safetensors")
    assert engine.run(graph, outputs=["ckpt"]).outputs["ckpt"].model.unet.config.in_channels == 4
    engine.run(graph, outputs=["ckpt"])
    assert runtime.models.loads == 1  # unchanged file: the loaded model is shared

    new = folder / "model.safetensors.part"
    shutil.copy(models_dir / "checkpoints" / "tiny-sd15-inpaint.safetensors", new)
    os.replace(new, folder / "model.safetensors")
    assert engine.run(graph, outputs=["ckpt"]).outputs["ckpt"].model.unet.config.in_channels == 9  # the new file
    assert runtime.models.loads == 2 and runtime.models.stats()["loaded"] == 1
