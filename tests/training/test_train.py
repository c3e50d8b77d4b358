"""A tiny training run end to end: the loss drops, the file is what every loader reads, the image changes."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from ipgraph.nodes.ipadapter import cross_attention_names, load_ipadapter
from ipgraph.nodes.training import TrainConfig, Trainer, save_adapter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(sd15, encoder, records, models_dir):
    """20 steps on the 8 images (whole dataset per batch, 64 px, lr 1e-2: an overfit task), fixed seed."""
    enc, enc_path = encoder
    trainer = Trainer(sd15, enc, records, TrainConfig(steps=20, batch_size=8, lr=1e-2, resolution=64, seed=0),
                      encoder_source=enc_path)
    folder = models_dir / "ipadapter"
    init = save_adapter(folder / "train-test-init.safetensors", trainer.adapter_module.h94_state_dict(),
                        trainer.describe())
    before = trainer.evaluate()
    losses = trainer.train()
    after = trainer.evaluate()
    meta = {"base_model": "tiny-sd15.safetensors", "image_encoder": "tiny-clip-vision.safetensors",
            **trainer.describe()}
    trained = save_adapter(folder / "train-test.safetensors", trainer.adapter_module.h94_state_dict(), meta)
    return dict(trainer=trainer, init=init, trained=trained, before=before, after=after, losses=losses)


def test_loss_drops_on_overfit_task(run):
    assert len(run["losses"]) == 20
    assert run["after"] < 0.95 * run["before"], (run["before"], run["after"])


def test_file_layout_and_metadata(run, sd15):
    with safe_open(str(run["trained"]), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    order = list(sd15.unet.attn_processors)
    expected_ip = {f"ip_adapter.{order.index(n)}.{kind}.weight" for n in cross_attention_names(sd15.unet)
                   for kind in ("to_k_ip", "to_v_ip")}
    assert {k for k in keys if k.startswith("ip_adapter.")} == expected_ip
    assert {k for k in keys if k.startswith("image_proj.")} == {"image_proj.proj.weight", "image_proj.proj.bias",
                                                                "image_proj.norm.weight", "image_proj.norm.bias"}
    assert meta["variant"] == "base" and meta["arch"] == "sd15" and meta["steps"] == "20"
    assert meta["base_model"] == "tiny-sd15.safetensors" and meta["image_encoder"] == "tiny-clip-vision.safetensors"


def _diffusers_pipe(models_dir):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPImageProcessor

    from ipgraph.nodes.ipadapter.encoder import load_clip_vision
    from ipgraph.nodes.models.single_file import load_checkpoint

    ckpt = load_checkpoint(models_dir / "checkpoints" / "tiny-sd15.safetensors")
    enc = load_clip_vision(models_dir / "clip_vision" / "tiny-clip-vision.safetensors")
    pipe = StableDiffusionPipeline(vae=ckpt.vae, text_encoder=ckpt.text_encoders[0], tokenizer=ckpt.tokenizers[0],
                                   unet=ckpt.unet, scheduler=EulerDiscreteScheduler.from_config(ckpt.scheduler_config),
                                   safety_checker=None, feature_extractor=CLIPImageProcessor(size=224, crop_size=224),
                                   image_encoder=enc, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_diffusers_loads_it_exactly_and_the_image_changes(run, models_dir, dataset):
    from PIL import Image

    pipe = _diffusers_pipe(models_dir)
    ours = load_ipadapter(run["trained"])  # what IPAdapterModelLoader loads
    folder = str(models_dir / "ipadapter")
    pipe.load_ip_adapter(folder, subfolder="", weight_name="train-test.safetensors", image_encoder_folder=None,
                         low_cpu_mem_usage=False)
    unet = pipe.unet
    # keys: every cross-attention layer got the file's to_k_ip/to_v_ip (low_cpu_mem_usage=False is strict, and
    # the comparison below checks each tensor), and the projection's state dict is exactly ours
    procs = [unet.attn_processors[n] for n in cross_attention_names(unet)]
    assert len(procs) == len(ours.to_k_ip) == 16
    for j, proc in enumerate(procs):
        assert (proc.to_k_ip[0].weight - ours.to_k_ip[j]).abs().max().item() == 0
        assert (proc.to_v_ip[0].weight - ours.to_v_ip[j]).abs().max().item() == 0
    theirs = unet.encoder_hid_proj.image_projection_layers[0].state_dict()
    mine = ours.image_proj.state_dict()
    assert set(theirs) == set(mine)
    assert max((theirs[k] - mine[k]).abs().max().item() for k in mine) == 0
    flat = run["trainer"].adapter_module.h94_state_dict()
    assert (flat["image_proj.proj.weight"] - mine["image_embeds.weight"]).abs().max().item() == 0

    ref = Image.open(dataset[1] / "000_red_circle.png").convert("RGB")

    def generate():
        return pipe("a shape", ip_adapter_image=ref, height=64, width=64, num_inference_steps=4, guidance_scale=1.0,
                    generator=torch.Generator().manual_seed(0), output_type="latent").images

    trained = generate()
    encoder, extractor = pipe.image_encoder, pipe.feature_extractor
    pipe.unload_ip_adapter()  # also drops the encoder: give it back
    pipe.register_modules(image_encoder=encoder, feature_extractor=extractor)
    pipe.load_ip_adapter(folder, subfolder="", weight_name="train-test-init.safetensors", image_encoder_folder=None,
                         low_cpu_mem_usage=False)
    init = generate()
    assert (trained - init).abs().max().item() > 1e-3


def _pack_split(path):
    """ComfyUI_IPAdapter_plus' ipadapter_model_loader for .safetensors: split on the two key prefixes."""
    from safetensors.torch import load_file

    model = {"image_proj": {}, "ip_adapter": {}}
    for key, value in load_file(str(path)).items():
        for part in model:
            if key.startswith(part + "."):
                model[part][key[len(part) + 1:]] = value
    return model


@pytest.mark.parametrize("variant", ["base", "plus"])
def test_comfyui_pack_layout(variant, sd15, encoder, tmp_path):
    """What the pack reads: layer 1's to_k_ip width as the context, 4 tokens from proj rows (base) or the
    Resampler sized as it builds it (plus: hidden = context, 12 heads of 64, 16 queries, depth 4)."""
    from ipgraph.nodes.training import IPAdapterModules

    adapter = IPAdapterModules.fresh(sd15.unet, encoder[0], variant)
    path = save_adapter(tmp_path / "a.safetensors", adapter.h94_state_dict(), {"variant": variant})
    model = _pack_split(path)
    dim = model["ip_adapter"]["1.to_k_ip.weight"].shape[1]
    assert dim == sd15.unet.config.cross_attention_dim and len(model["ip_adapter"]) == 32
    proj = model["image_proj"]
    if variant == "base":
        assert proj["proj.weight"].shape == (4 * dim, encoder[0].config.projection_dim)
    else:
        assert proj["latents"].shape == (1, 16, dim)
        assert proj["layers.0.0.to_q.weight"].shape == (12 * 64, dim)
        assert proj["proj_in.weight"].shape == (dim, encoder[0].config.hidden_size)
        assert len({k.split(".")[1] for k in proj if k.startswith("layers.")}) == 4
