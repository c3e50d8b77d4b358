"""ControlNet: file formats, the nodes, diffusers' ControlNet pipelines as the oracle, bad inputs, demo graphs.

Oracle: StableDiffusion(XL)ControlNetPipeline built from the very modules ipgraph loaded (UNet, VAE, text
encoders from the checkpoint file, the ControlNet from the ControlNet file) with EulerDiscreteScheduler from
the checkpoint's scheduler config; the hint handed to diffusers is ipgraph's own CannyEdge output as a
[1,3,H,W] tensor in [0, 1] (diffusers' control image processor leaves such a tensor unchanged).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetPipeline,
)

from ipgraph.engine import Graph, NodeFailed, ValidationFailed
from ipgraph.nodes.controlnet.model import load_controlnet
from ipgraph.nodes.image.image_ops import canny, scale_image
from ipgraph.nodes.tiny.controlnet import build_tiny_controlnet

TOL = 1e-4
PROMPT, NEGATIVE = "a house by a tree", "blurry"
GRAPHS = Path(__file__).resolve().parents[2] / "graphs"
CN15, CN15_DIFFUSERS, CNXL = ("tiny-controlnet-sd15.safetensors", "tiny-controlnet-sd15-diffusers",
                              "tiny-controlnet-sdxl.safetensors")



def max_diff(a, b):
    return (a.float().cpu() - b.float().cpu()).abs().max().item()


def cn_graph(ckpt="tiny-sd15.safetensors", controls=((CN15, 1.0, 0.0, 1.0, "canny"),), size=(64, 64), steps=6,
             cfg=7.0, seed=7, batch=1, mask=None):
    """txt2img with chained ControlNetApply nodes; a control's hint is "canny" (edges) or "scene" (the photo)."""
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name=ckpt)
    pos = g.add("CLIPTextEncode", id="pos", clip=ck.clip, text=PROMPT).conditioning
    neg = g.add("CLIPTextEncode", id="neg", clip=ck.clip, text=NEGATIVE).conditioning
    img = g.add("LoadImage", id="img", image="scene.png")
    scaled = g.add("ImageScale", id="scale", image=img.image, width=size[0], height=size[1], crop="center")
    hints = {"canny": g.add("CannyEdge", id="canny", image=scaled.image).image, "scene": scaled.image}
    for i, (name, strength, start, end, hint) in enumerate(controls):
        net = g.add("ControlNetLoader", id=f"cn{i}", name=name)
        extra = {"mask": mask} if mask is not None else {}
        apply = g.add("ControlNetApply", id=f"apply{i}", positive=pos, negative=neg, control_net=net.control_net,
                      image=hints[hint], strength=strength, start_percent=start, end_percent=end, **extra)
        pos, neg = apply.positive, apply.negative
    lat = g.add("EmptyLatentImage", id="lat", width=size[0], height=size[1], batch_size=batch)
    g.add("KSampler", id="ks", model=ck.model, positive=pos, negative=neg, latent_image=lat.latent, seed=seed,
          steps=steps, cfg=cfg, sampler_name="euler", scheduler="normal")
    return g


def run(engine, graph):
    return engine.run(graph, outputs=["ks"])


def hint_of(result, which):
    image = result.outputs["canny"].image if which == "canny" else result.outputs["scale"].IMAGE
    return image.permute(0, 3, 1, 2).contiguous()


def sd15_pipe(result, nets):
    model, clip, vae = result.outputs["ckpt"].model, result.outputs["ckpt"].clip, result.outputs["ckpt"].vae
    return StableDiffusionControlNetPipeline(
        vae=vae.vae, text_encoder=clip.text_encoders[0], tokenizer=clip.tokenizers[0], unet=model.unet,
        controlnet=list(nets) if len(nets) > 1 else nets[0], safety_checker=None, feature_extractor=None,
        scheduler=EulerDiscreteScheduler.from_config(model.scheduler_config), requires_safety_checker=False)


def test_controlnet_files_round_trip_both_formats(models_dir):
    for arch in ("sd15", "sdxl"):
        ref = build_tiny_controlnet(arch).state_dict()
        for name in (f"tiny-controlnet-{arch}.safetensors", f"tiny-controlnet-{arch}-diffusers"):
            got = load_controlnet(models_dir / "controlnet" / name).state_dict()
            assert set(got) == set(ref)
            assert all(torch.equal(got[k], ref[k]) for k in ref), name
    config = json.loads((models_dir / "controlnet" / "tiny-controlnet-sd15-diffusers" / "config.json").read_text())
    assert config["_class_name"] == "ControlNetModel"


def test_original_layout_uses_real_key_names(models_dir):
    from safetensors import safe_open

    with safe_open(str(models_dir / "controlnet" / CN15), framework="pt") as f:
        keys = set(f.keys())
    assert all(k.startswith("control_model.") for k in keys)
    for k in ("control_model.input_hint_block.14.weight", "control_model.zero_convs.0.0.weight",
              "control_model.middle_block_out.0.bias", "control_model.input_blocks.1.1.proj_in.weight",
              "control_model.time_embed.0.weight"):
        assert k in keys


@pytest.mark.parametrize("controls,steps", [
    (((CN15, 0.8, 0.0, 1.0, "canny"),), 6),
    (((CN15, 1.0, 0.2, 0.7, "canny"),), 10),  # control_guidance_start/end
])
def test_single_controlnet_matches_diffusers(engine, controls, steps):
    result = run(engine, cn_graph(controls=controls, steps=steps))
    (name, strength, start, end, hint), = controls
    net = result.outputs["cn0"].CONTROL_NET.net
    expected = sd15_pipe(result, [net])(
        PROMPT, image=hint_of(result, hint), negative_prompt=NEGATIVE, height=64, width=64,
        num_inference_steps=steps, guidance_scale=7.0, controlnet_conditioning_scale=strength,
        control_guidance_start=start, control_guidance_end=end,
        generator=torch.Generator("cpu").manual_seed(7), output_type="latent").images
    got = result.outputs["ks"].LATENT.samples
    assert max_diff(got, expected) <= TOL
    plain = run(engine, cn_graph(controls=(), steps=steps)).outputs["ks"].LATENT.samples
    assert max_diff(got, plain) > 1e-3  # the ControlNet did something


def test_multi_controlnet_matches_diffusers(engine):
    controls = ((CN15, 0.7, 0.0, 0.6, "canny"), (CN15_DIFFUSERS, 0.5, 0.3, 1.0, "scene"))
    result = run(engine, cn_graph(controls=controls, steps=8, batch=2))
    nets = [result.outputs[f"cn{i}"].CONTROL_NET.net for i in range(2)]
    expected = sd15_pipe(result, nets)(
        PROMPT, image=[hint_of(result, c[4]) for c in controls], negative_prompt=NEGATIVE, height=64, width=64,
        num_inference_steps=8, guidance_scale=7.0, num_images_per_prompt=2,
        controlnet_conditioning_scale=[c[1] for c in controls], control_guidance_start=[c[2] for c in controls],
        control_guidance_end=[c[3] for c in controls], generator=torch.Generator("cpu").manual_seed(7),
        output_type="latent").images
    assert max_diff(result.outputs["ks"].LATENT.samples, expected) <= TOL


def test_sdxl_controlnet_matches_diffusers(engine):
    result = run(engine, cn_graph("tiny-sdxl.safetensors", controls=((CNXL, 0.9, 0.0, 0.8, "canny"),)))
    model, clip, vae = result.outputs["ckpt"].model, result.outputs["ckpt"].clip, result.outputs["ckpt"].vae
    pipe = StableDiffusionXLControlNetPipeline(
        vae=vae.vae, text_encoder=clip.text_encoders[0], text_encoder_2=clip.text_encoders[1],
        tokenizer=clip.tokenizers[0], tokenizer_2=clip.tokenizers[1], unet=model.unet,
        controlnet=result.outputs["cn0"].CONTROL_NET.net,
        scheduler=EulerDiscreteScheduler.from_config(model.scheduler_config))
    expected = pipe(PROMPT, image=hint_of(result, "canny"), negative_prompt=NEGATIVE, height=64, width=64,
                    num_inference_steps=6, guidance_scale=7.0, controlnet_conditioning_scale=0.9,
                    control_guidance_end=0.8, generator=torch.Generator("cpu").manual_seed(7),
                    output_type="latent").images
    assert max_diff(result.outputs["ks"].LATENT.samples, expected) <= TOL


def test_controlnet_sees_text_only_and_its_processors_stay_untouched(engine, models_dir):
    """With an IP-Adapter patch on the MODEL, the ControlNet still gets the 77 text tokens, its attention
    processors are never swapped, and the shared UNet is restored afterwards."""
    from ipgraph.nodes.diffusion.sampling import sample
    from ipgraph.nodes.ipadapter import IPAdapterPatch, load_ipadapter

    result = run(engine, cn_graph(steps=2))
    net = result.outputs["cn0"].CONTROL_NET.net
    model = result.outputs["ckpt"].model
    adapter = load_ipadapter(models_dir / "ipadapter" / "tiny-ip-adapter_sd15.safetensors")
    patch = IPAdapterPatch(adapter, adapter.project(torch.randn(1, 32, generator=torch.Generator().manual_seed(0))),
                           adapter.project(torch.zeros(1, 32)))
    before_cn = dict(net.attn_processors)
    before_unet = dict(model.unet.attn_processors)
    seen = []

    def hook(module, args, kwargs):
        seen.append((kwargs["encoder_hidden_states"].shape,
                     all(p is before_cn[k] for k, p in module.attn_processors.items()),
                     any(p is not before_unet[k] for k, p in model.unet.attn_processors.items())))

    handle = net.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        sample(model.with_patch(patch), result.outputs["apply0"].positive, result.outputs["apply0"].negative,
               result.outputs["lat"].LATENT, seed=7, steps=2, cfg=7.0, sampler="euler", schedule="normal",
               denoise=1.0, device="cpu", dtype=torch.float32)
    finally:
        handle.remove()
    assert seen and all(shape == (2, 77, 32) and cn_same and unet_patched for shape, cn_same, unet_patched in seen)
    assert all(p is before_unet[k] for k, p in model.unet.attn_processors.items())


def test_conditioning_is_not_mutated_and_zero_strength_passes_through(engine):
    result = run(engine, cn_graph(controls=((CN15, 0.0, 0.0, 1.0, "canny"), (CN15, 1.0, 0.0, 1.0, "canny"))))
    assert result.outputs["apply0"].positive is result.outputs["pos"].CONDITIONING
    assert result.outputs["pos"].CONDITIONING.controls == ()
    assert len(result.outputs["apply1"].positive.controls) == 1
    assert result.outputs["apply1"].positive.controls[0] is result.outputs["apply1"].negative.controls[0]


def test_mask_of_ones_is_no_mask_and_zeros_is_no_control(engine):
    base = run(engine, cn_graph(steps=3)).outputs["ks"].LATENT.samples
    plain = run(engine, cn_graph(controls=(), steps=3)).outputs["ks"].LATENT.samples
    from ipgraph.nodes.diffusion.sampling import sample

    result = run(engine, cn_graph(steps=3))
    control = result.outputs["apply0"].positive.controls[0]
    for value, want in ((1.0, base), (0.0, plain)):
        masked = type(control)(control.handle, control.hint, control.strength, control.start, control.end,
                               torch.full((1, 32, 32), value))  # another size than the image: resized
        pos = result.outputs["pos"].CONDITIONING.with_control(masked)
        neg = result.outputs["neg"].CONDITIONING.with_control(masked)
        got = sample(result.outputs["ckpt"].model, pos, neg, result.outputs["lat"].LATENT, seed=7, steps=3, cfg=7.0,
                     sampler="euler", schedule="normal", denoise=1.0, device="cpu", dtype=torch.float32)
        assert max_diff(got, want) <= 1e-6


def test_hint_of_another_size_is_resized(engine):
    g = cn_graph(steps=3)
    g.set("scale", "width", 96)  # a 96x64 hint for a 64x64 image
    result = run(engine, g)
    assert result.outputs["canny"].image.shape[1:3] == (64, 96)
    assert result.outputs["ks"].LATENT.samples.shape == (1, 4, 8, 8)


def test_controlnet_for_another_base_model_is_refused(engine):
    with pytest.raises(NodeFailed) as info:
        run(engine, cn_graph(controls=((CNXL, 1.0, 0.0, 1.0, "canny"),), steps=2))
    err = info.value.error
    assert err.node_id == "apply0" and "control_net" in err.message and "SDXL ControlNet" in err.message


def test_bad_widgets_and_missing_files_fail_validation(engine):
    g = cn_graph(controls=((CN15, 1.0, 0.8, 0.2, "canny"),))
    g.set("cn0", "name", "nope.safetensors")
    with pytest.raises(ValidationFailed) as info:
        run(engine, g)
    problems = {(p.node_id, p.input) for p in info.value.problems}
    assert ("cn0", "name") in problems and ("apply0", "start_percent") in problems
    g = cn_graph()
    g.set("cn0", "name", "../checkpoints/tiny-sd15.safetensors")
    with pytest.raises(ValidationFailed):
        engine.run(g)


def test_empty_hint_is_a_clear_error():
    from ipgraph.nodes.controlnet.nodes import hint_tensor

    with pytest.raises(ValueError, match="image: the hint image is empty"):
        hint_tensor(torch.zeros(1, 0, 64, 3))


def test_canny_finds_the_edges_of_a_square():
    image = torch.zeros(1, 32, 32, 3)
    image[:, 8:24, 8:24] = 1.0
    edges = canny(image, 0.4, 0.8)
    assert edges.shape == (1, 32, 32, 3) and set(edges.unique().tolist()) <= {0.0, 1.0}
    rows = edges[0, :, :, 0]
    assert rows[16, 6:11].sum() >= 1 and rows[16, 22:26].sum() >= 1  # left and right sides
    assert rows[14:18, 14:18].sum() == 0 and rows[0:4].sum() == 0  # nothing inside or far away
    assert rows[16, :].sum() <= 4  # thin: one or two pixels per side
    assert canny(torch.full((1, 16, 16, 3), 0.5), 0.1, 0.2).sum() == 0  # flat image: no edges


def test_image_scale_center_crop():
    image = torch.zeros(1, 40, 80, 3)
    image[:, :, 20:60] = 1.0  # the central square is white
    out = scale_image(image, 20, 20, "bilinear", "center")
    assert out.shape == (1, 20, 20, 3) and out.min() > 0.99
    stretched = scale_image(image, 20, 20, "nearest-exact", "disabled")
    assert stretched[0, :, 0].max() == 0  # the black border survives when not cropping
    assert scale_image(image, 0, 20, "area").shape == (1, 20, 40, 3)  # 0 keeps the aspect ratio


@pytest.mark.parametrize("name", ["controlnet_canny.json", "controlnet_canny_ipadapter.json", "controlnet_sdxl.json"])
def test_demo_graphs_run(engine, name):
    graph = Graph.from_json((GRAPHS / name).read_text())
    result = engine.run(graph)
    images = [v.IMAGE for v in result.outputs.values() if hasattr(v, "IMAGE")]  # decoded (VAEDecode)
    assert images and images[-1].shape[-1] == 3 and any(ui.get("images") for ui in result.ui.values())


def test_comfyui_api_workflow_imports_and_runs(engine):
    """ComfyUI's class and input names (ControlNetLoader.control_net_name, ControlNetApplyAdvanced, Canny)."""
    from ipgraph.engine.comfy import from_comfy_api

    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": PROMPT}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": NEGATIVE}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "scene.png", "upload": "image"}},
        "5": {"class_type": "ImageScale", "inputs": {"image": ["4", 0], "upscale_method": "bilinear", "width": 64,
                                                     "height": 64, "crop": "center"}},
        "6": {"class_type": "Canny", "inputs": {"image": ["5", 0], "low_threshold": 0.4, "high_threshold": 0.8}},
        "7": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": CN15}},
        "8": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["2", 0], "negative": ["3", 0], "control_net": ["7", 0], "image": ["6", 0],
            "strength": 0.8, "start_percent": 0.0, "end_percent": 1.0}},
        "9": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "10": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["8", 0], "negative": ["8", 1], "latent_image": ["9", 0], "seed": 7,
            "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
    }
    result = engine.run(from_comfy_api(prompt), outputs=["10"])
    assert len(result.outputs["8"].positive.controls) == 1


def test_controlnet_and_ipadapter_both_act_in_the_demo_graph(engine):
    from ipgraph.engine import Link

    def latents(model=None, cond=None):
        g = Graph.from_json((GRAPHS / "controlnet_canny_ipadapter.json").read_text())
        g.set("sampler", "steps", 4)
        if model:
            g.set("sampler", "model", Link(*model))
        if cond:
            g.set("sampler", "positive", Link(cond[0], "CONDITIONING"))
            g.set("sampler", "negative", Link(cond[1], "CONDITIONING"))
        return engine.run(g, outputs=["sampler"]).outputs["sampler"].LATENT.samples

    both = latents()
    assert max_diff(both, latents(model=("ckpt", "model"))) > 1e-3  # IP-Adapter acts
    assert max_diff(both, latents(cond=("positive", "negative"))) > 1e-3  # ControlNet acts
    assert torch.equal(both, latents())  # and nothing shared was changed by the runs between
