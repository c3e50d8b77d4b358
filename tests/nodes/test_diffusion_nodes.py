"""The diffusion nodes as a user meets them: caching, progress, cancellation, files, bad input, the demo."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from ipgraph.engine import CancelToken, Engine, Graph, NodeFailed, RunCancelledError, events

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def small_graph(ckpt="tiny-sd15.safetensors", seed=1, steps=4, width=64, height=64, image=None, denoise=1.0):
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name=ckpt)
    pos = g.add("CLIPTextEncode", id="pos", clip=ck.clip, text="a bear")
    neg = g.add("CLIPTextEncode", id="neg", clip=ck.clip, text="")
    if image:
        img = g.add("LoadImage", id="img", image=image)
        lat = g.add("VAEEncode", id="lat", pixels=img.image, vae=ck.vae)
    else:
        lat = g.add("EmptyLatentImage", id="lat", width=width, height=height)
    ks = g.add("KSampler", id="ks", model=ck.model, positive=pos.conditioning, negative=neg.conditioning,
               latent_image=lat.latent, seed=seed, steps=steps, cfg=5.0, denoise=denoise)
    dec = g.add("VAEDecode", id="dec", samples=ks.latent, vae=ck.vae)
    g.add("SaveImage", id="save", images=dec.image, filename_prefix="t")
    return g


def problems(engine, graph):
    return {(p.node_id, p.input, p.type): p.message for p in engine.validate(graph)}


def test_new_seed_reruns_only_sampling_and_decoding(engine):
    engine.run(small_graph(seed=1))
    r = engine.run(small_graph(seed=2))
    assert r.executed == ["ks", "dec", "save"]
    assert set(r.cached) == {"ckpt", "pos", "neg", "lat"}


def test_model_manager_loads_each_file_once(engine, runtime):
    engine.run(small_graph())
    loads = runtime.models.loads
    fresh = Engine(engine.registry, runtime)  # empty output cache, same model manager
    r = fresh.run(small_graph())
    assert "ckpt" in r.executed and runtime.models.loads == loads
    assert r.outputs["ckpt"].model.unet is engine.run(small_graph()).outputs["ckpt"].model.unet


def test_progress_per_step_with_previews(engine):
    seen = []
    engine.run(small_graph(steps=5), on_event=seen.append)
    progress = [e for e in seen if isinstance(e, events.NodeProgress)]
    assert [(e.node_id, e.value, e.max) for e in progress] == [("ks", i, 5) for i in range(1, 6)]
    assert all(e.preview is not None and e.preview.size[0] >= 64 for e in progress)


def test_cancel_between_steps(engine):
    token = CancelToken()
    seen = []

    def on_event(e):
        seen.append(e)
        if isinstance(e, events.NodeProgress) and e.value == 2:
            threading.Thread(target=token.cancel).start()
            threading.Event().wait(0.05)

    with pytest.raises(RunCancelledError):
        engine.run(small_graph(steps=50), on_event=on_event, cancel=token)
    steps = [e.value for e in seen if isinstance(e, events.NodeProgress)]
    assert max(steps) < 10 and isinstance(seen[-1], events.RunCancelled)


def test_saved_png_carries_the_graph_and_reruns(engine, runtime, tmp_path):
    r = engine.run(small_graph())
    (image,) = r.ui["save"]["images"]
    png = runtime.output_dir / image["filename"]
    from ipgraph.nodes.image.image_io import graph_from_png

    assert graph_from_png(png) == small_graph().to_dict()
    out = tmp_path / "rerun"
    cmd = [sys.executable, "-m", "ipgraph", "run", str(png), "--models-dir", str(runtime.models_dir),
           "--output-dir", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.glob("t_*.png"))) == 1


def test_load_image_gives_image_and_mask_from_alpha(engine, runtime):
    from PIL import Image

    runtime.input_dir.mkdir(parents=True, exist_ok=True)
    rgba = Image.new("RGBA", (16, 8), (255, 0, 0, 255))
    rgba.putpixel((3, 2), (0, 0, 255, 0))
    rgba.save(runtime.input_dir / "rgba.png")
    g = Graph()
    g.add("LoadImage", id="img", image="rgba.png")
    r = engine.run(g, outputs=["img"])
    image, mask = r.outputs["img"].IMAGE, r.outputs["img"].MASK
    assert image.shape == (1, 8, 16, 3) and mask.shape == (1, 8, 16)
    assert mask[0, 2, 3] == 1.0 and mask.sum() == 1.0 and image[0, 0, 0].tolist() == [1.0, 0.0, 0.0]


def test_bad_files_get_clear_validation_errors(engine, runtime):
    ck = runtime.models_dir / "checkpoints"
    (ck / "truncated.safetensors").write_bytes((ck / "tiny-sd15.safetensors").read_bytes()[:5000])
    (ck / "garbage.safetensors").write_bytes(b"\x00" * 100)
    shutil.copy(runtime.models_dir / "vae" / "tiny-sd15-vae.safetensors", ck / "just-a-vae.safetensors")
    for name, phrase in [("truncated.safetensors", "corrupt or truncated"),
                         ("garbage.safetensors", "not a readable safetensors file"),
                         ("just-a-vae.safetensors", "holds only a VAE"),
                         ("nope.safetensors", "no checkpoints model named 'nope.safetensors'")]:
        found = problems(engine, small_graph(ckpt=name))
        assert phrase in found[("ckpt", "name", "invalid_value")], name
    assert "tiny-sd15.safetensors" in problems(engine, small_graph(ckpt="nope.safetensors"))[
        ("ckpt", "name", "invalid_value")]  # the message lists what is available


def test_pickle_checkpoint_is_refused_unless_weights_only(engine, runtime, tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = runtime.models_dir / "checkpoints" / "evil.ckpt"
    torch.save({"state_dict": {"x": Evil()}}, path)
    with pytest.raises(NodeFailed) as info:
        engine.run(small_graph(ckpt="evil.ckpt"))
    assert info.value.error.node_id == "ckpt" and "weights-only" in info.value.error.message.lower().replace("_", "-")
    assert not (tmp_path / "pwned").exists()


def test_unknown_architecture_is_named(engine, runtime):
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
               "cond_stage_model.model.token_embedding.weight": torch.zeros(4, 4)},
              str(runtime.models_dir / "checkpoints" / "sd2.safetensors"))
    assert "Stable Diffusion 2.x" in problems(engine, small_graph(ckpt="sd2.safetensors"))[
        ("ckpt", "name", "invalid_value")]


def test_not_an_image_and_bad_sizes(engine, runtime):
    runtime.input_dir.mkdir(parents=True, exist_ok=True)
    (runtime.input_dir / "fake.png").write_text("hello")
    found = problems(engine, small_graph(image="fake.png"))
    assert "fake.png is not a readable image" in found[("img", "image", "invalid_value")]
    found = problems(engine, small_graph(width=65))
    assert ("lat", "width", "out_of_range") in found and "multiple of 8" in found[("lat", "width", "out_of_range")]
    runtime.max_pixels = 128 * 128
    found = problems(engine, small_graph(width=4096, height=4096))
    assert "above the pixel limit" in found[("lat", "width", "invalid_value")]


def test_image_not_divisible_by_8_is_a_clear_run_error(engine, runtime):
    from PIL import Image

    runtime.input_dir.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (60, 64)).save(runtime.input_dir / "odd.png")
    with pytest.raises(NodeFailed) as info:
        engine.run(small_graph(image="odd.png", denoise=0.5))
    assert info.value.error.node_id == "lat" and "divisible by 8" in info.value.error.message


def test_base_model_output_is_unchanged_by_other_runs(engine):
    """A-B-A: running another graph on the same loaded UNet never changes it."""
    a1 = engine.run(small_graph(seed=5)).outputs["ks"].LATENT.samples.clone()
    engine.run(small_graph(seed=6, steps=3, image="bear.png", denoise=0.7))
    engine.cache.clear()
    a2 = engine.run(small_graph(seed=5)).outputs["ks"].LATENT.samples
    assert torch.equal(a1, a2)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "graphs").glob("*.json")
                                         if not p.name.startswith("ipadapter_plus_")))  # tests/ipadapter_plus runs those
def test_every_bundled_graph_validates_and_runs(engine, runtime, name):
    from ipgraph.engine.comfy import from_comfy_api, is_comfy_api

    doc = json.loads((ROOT / "graphs" / name).read_text())
    graph = from_comfy_api(doc) if is_comfy_api(doc) else Graph.from_dict(doc)
    assert engine.validate(graph) == []
    r = engine.run(graph)
    saved = [i for ui in r.ui.values() for i in ui.get("images", [])]
    assert saved and all((runtime.output_dir / i["subfolder"] / i["filename"]).exists() for i in saved
                         if i["type"] == "output")


def test_sdxl_vae_stays_fp32_when_models_run_in_fp16(models_dir, tmp_path):
    """fp16 runtimes (CUDA) keep the SDXL VAE in fp32, as diffusers' force_upcast does; the UNet is fp16."""
    import ipgraph.nodes  # noqa: F401
    from ipgraph.engine import REGISTRY
    from ipgraph.nodes.core.runtime import Runtime

    runtime = Runtime.create(models_dir=models_dir, output_dir=tmp_path, device="cpu", dtype="float16")
    g = Graph()
    g.add("LoadCheckpoint", id="xl", name="tiny-sdxl.safetensors")
    g.add("LoadCheckpoint", id="sd", name="tiny-sd15.safetensors")
    r = Engine(REGISTRY, runtime).run(g, outputs=["xl", "sd"])
    assert r.outputs["xl"].vae.vae.dtype == torch.float32 and r.outputs["xl"].model.unet.dtype == torch.float16
    assert r.outputs["sd"].vae.vae.dtype == torch.float16
