"""One training step of ipgraph's loop vs the same step written literally after the reference script:
same batch, same drops, same VAE sample, noise and timesteps -> same inputs, same loss, same gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import DDPMScheduler

from ipgraph.nodes.ipadapter import cross_attention_names
from ipgraph.nodes.models.single_file import load_checkpoint
from ipgraph.nodes.training import TrainConfig, Trainer, installed
from ipgraph.nodes.training.data import draw_drops

from .reference_recipe import ImageProjModel, build_reference, reference_batch, reference_loss

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("variant", ["base", "plus"])
def test_one_step_matches_the_reference(variant, sd15, encoder, records, models_dir):
    enc, enc_path = encoder
    config = TrainConfig(variant=variant, steps=1, batch_size=8, resolution=64, seed=5, plus_heads=1,
                         drop_rates=(0.2, 0.2, 0.2))  # high rates so this batch has every kind of drop
    trainer = Trainer(sd15, enc, records, config, encoder_source=enc_path)
    x = trainer.inputs(0)
    # the same random draws, in the trainer's order: drops, VAE sample, noise, timesteps
    g = trainer.generator(0)
    drop_image, blank_text = draw_drops(len(x.indices), g, config.drop_rates)
    assert any(drop_image) and any(blank_text) and not all(drop_image)
    eps = torch.randn(x.latents.shape, generator=g)
    noise = torch.randn(x.latents.shape, generator=g)
    timesteps = torch.randint(0, 1000, (len(x.indices),), generator=g).long()
    assert torch.equal(noise, x.noise) and torch.equal(timesteps, x.timesteps)

    with installed(sd15.unet, trainer.adapter_module):
        loss = trainer.compute_loss(x)
        loss.backward()
    mine = trainer.adapter_module

    # the reference, on its own copy of the UNet (its set-up rewrites the processors)
    unet = load_checkpoint(models_dir / "checkpoints" / "tiny-sd15.safetensors").unet.requires_grad_(False)
    if variant == "base":
        proj = ImageProjModel(int(unet.config.cross_attention_dim), int(enc.config.projection_dim), 4)
        proj.load_state_dict({"proj.weight": mine.image_proj.image_embeds.weight.detach(),
                              "proj.bias": mine.image_proj.image_embeds.bias.detach(),
                              "norm.weight": mine.image_proj.norm.weight.detach(),
                              "norm.bias": mine.image_proj.norm.bias.detach()})
    else:
        proj = copy.deepcopy(mine.image_proj)
        proj.zero_grad(set_to_none=True)
    ip_adapter = build_reference(unet, proj, mine.num_tokens)
    batch = reference_batch([records[i] for i in x.indices], sd15.tokenizers[0], 64, 224, drop_image, blank_text)
    scheduler = DDPMScheduler.from_config(sd15.scheduler_config)
    ref_loss, ref_latents = reference_loss(ip_adapter, sd15.vae, sd15.text_encoders[0], enc, scheduler, batch,
                                           variant, eps, noise, timesteps)
    ref_loss.backward()

    assert (ref_latents - x.latents).abs().max().item() <= 1e-6
    assert abs(ref_loss.item() - loss.item()) <= 1e-6
    grads = {}
    ref_proj = dict(ip_adapter.image_proj_model.named_parameters())
    names = {"image_embeds.weight": "proj.weight", "image_embeds.bias": "proj.bias"} if variant == "base" else {}
    for name, p in mine.image_proj.named_parameters():
        grads[f"image_proj.{name}"] = (p.grad, ref_proj[names.get(name, name)].grad)
    procs = [unet.attn_processors[n] for n in cross_attention_names(unet)]
    for j, proc in enumerate(procs):
        grads[f"to_k_ip.{j}"] = (mine.to_k_ip[j].weight.grad, proc.to_k_ip.weight.grad)
        grads[f"to_v_ip.{j}"] = (mine.to_v_ip[j].weight.grad, proc.to_v_ip.weight.grad)
    assert len(procs) == 16 and all(a is not None and b is not None for a, b in grads.values())
    worst = max((a - b).abs().max().item() for a, b in grads.values())
    assert worst <= 1e-5, worst
    assert max(a.abs().max().item() for a, _ in grads.values()) > 1e-4  # the gradients are not all zero
