"""One copy of the weights: files read once into aligned memory, modules filled by assignment, models dropped
under a RAM budget with the cached outputs that hold them (so the memory really goes)."""

from __future__ import annotations

import gc
import shutil
import weakref

import pytest
import torch
from safetensors.torch import load_file

from ipgraph.nodes.ipadapter import load_clip_vision
from ipgraph.nodes.models.single_file import CheckpointError, load_checkpoint
from ipgraph.nodes.models.tensorfile import TensorFileError, read_safetensors


def test_reader_matches_safetensors_and_aligns_every_tensor(models_dir):
    path = models_dir / "checkpoints" / "tiny-sd15.safetensors"
    want = load_file(str(path))
    got, meta = read_safetensors(path)
    assert got.keys() == want.keys() and "ipgraph" in meta
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
        assert got[k].data_ptr() % 64 == 0 or got[k].numel() == 0, k
    half, _ = read_safetensors(path, torch.float16)
    assert all(t.dtype == torch.float16 for t in half.values() if t.is_floating_point())
    assert torch.equal(half["model.diffusion_model.out.2.weight"], want["model.diffusion_model.out.2.weight"].half())


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
