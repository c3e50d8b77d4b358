"""The reference training step (tencent-ailab/IP-Adapter ``tutorial_train.py`` / ``_plus``), written out
literally on the same frozen models, for the equivalence test and the benchmark's peer loop.

Only what the reference needs from torchvision is re-stated with PIL (torchvision is not installable here):
``Resize(size, BILINEAR)`` (shortest side; long side ``int(size * long / short)``), ``CenterCrop(size)``
(offsets ``round((h - size) / 2)``), ``ToTensor`` and ``Normalize([0.5], [0.5])``. The plus projection is
diffusers' ``IPAdapterPlusImageProjection`` (diffusers' port of the reference ``Resampler``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPImageProcessor


def reference_transform(raw: Image.Image, size: int) -> torch.Tensor:
    w, h = raw.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    img = raw.resize((nw, nh), Image.BILINEAR)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    t = torch.from_numpy(np.asarray(img, dtype=np.float32).transpose(2, 0, 1).copy()) / 255.0
    return (t - 0.5) / 0.5


class ImageProjModel(torch.nn.Module):
    """The reference base projection: Linear to tokens·D, reshape, LayerNorm."""

    def __init__(self, cross_attention_dim, clip_embeddings_dim, clip_extra_context_tokens=4):
        super().__init__()
        self.cross_attention_dim = cross_attention_dim
        self.clip_extra_context_tokens = clip_extra_context_tokens
        self.proj = torch.nn.Linear(clip_embeddings_dim, clip_extra_context_tokens * cross_attention_dim)
        self.norm = torch.nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds):
        tokens = self.proj(image_embeds).reshape(-1, self.clip_extra_context_tokens, self.cross_attention_dim)
        return self.norm(tokens)


class IPAttnProcessor2_0(torch.nn.Module):  # noqa: N801  (the reference's name)
    """The reference decoupled cross-attention processor (a module holding to_k_ip / to_v_ip)."""

    def __init__(self, hidden_size, cross_attention_dim, scale=1.0, num_tokens=4):
        super().__init__()
        self.scale, self.num_tokens = scale, num_tokens
        self.to_k_ip = torch.nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = torch.nn.Linear(cross_attention_dim, hidden_size, bias=False)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        residual = hidden_states
        batch_size = encoder_hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        end_pos = encoder_hidden_states.shape[1] - self.num_tokens
        encoder_hidden_states, ip_hidden_states = (encoder_hidden_states[:, :end_pos, :],
                                                   encoder_hidden_states[:, end_pos:, :])
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                                       is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        ip_key = self.to_k_ip(ip_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        ip_value = self.to_v_ip(ip_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        ip_hidden_states = F.scaled_dot_product_attention(query, ip_key, ip_value, attn_mask=None, dropout_p=0.0,
                                                          is_causal=False)
        ip_hidden_states = ip_hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states + self.scale * ip_hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class IPAdapter(torch.nn.Module):
    def __init__(self, unet, image_proj_model, adapter_modules):
        super().__init__()
        self.unet, self.image_proj_model, self.adapter_modules = unet, image_proj_model, adapter_modules

    def forward(self, noisy_latents, timesteps, encoder_hidden_states, image_embeds):
        ip_tokens = self.image_proj_model(image_embeds)
        encoder_hidden_states = torch.cat([encoder_hidden_states, ip_tokens], dim=1)
        return self.unet(noisy_latents, timesteps, encoder_hidden_states).sample


class AttnProcessor(torch.nn.Module):
    """The reference's plain processor for attn1 (a module without parameters, as in its
    attention_processor.py); the math is diffusers' AttnProcessor2_0."""

    def __init__(self):
        super().__init__()
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.inner = AttnProcessor2_0()

    def __call__(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def build_reference(unet, image_proj_model, num_tokens):
    """The reference set-up of the processors: attn1 keeps a plain processor, every attn2 gets an
    IPAttnProcessor initialised from its to_k/to_v; adapter_modules = ModuleList(all processors)."""
    attn_procs = {}
    unet_sd = unet.state_dict()
    for name in unet.attn_processors.keys():
        cross = None if name.endswith("attn1.processor") else unet.config.cross_attention_dim
        if name.startswith("mid_block"):
            hidden_size = unet.config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden_size = list(reversed(unet.config.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden_size = unet.config.block_out_channels[int(name[len("down_blocks.")])]
        if cross is None:
            attn_procs[name] = AttnProcessor()
        else:
            layer = name.split(".processor")[0]
            attn_procs[name] = IPAttnProcessor2_0(hidden_size=hidden_size, cross_attention_dim=cross,
                                                  num_tokens=num_tokens)
            attn_procs[name].load_state_dict({"to_k_ip.weight": unet_sd[layer + ".to_k.weight"],
                                              "to_v_ip.weight": unet_sd[layer + ".to_v.weight"]})
    unet.set_attn_processor(attn_procs)
    adapter_modules = torch.nn.ModuleList(unet.attn_processors.values())
    return IPAdapter(unet, image_proj_model, adapter_modules)


def reference_batch(records, tokenizer, size, image_size, drop_image, blank_text):
    """MyDataset.__getitem__ + collate_fn, with the drop decisions given instead of drawn."""
    processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
    images, ids, clips = [], [], []
    for r, blank in zip(records, blank_text, strict=True):
        raw = Image.open(r.path)
        images.append(reference_transform(raw.convert("RGB"), size))
        clips.append(processor(images=raw, return_tensors="pt").pixel_values)
        ids.append(tokenizer("" if blank else r.text, max_length=tokenizer.model_max_length, padding="max_length",
                             truncation=True, return_tensors="pt").input_ids)
    return {"images": torch.stack(images), "text_input_ids": torch.cat(ids), "clip_images": torch.cat(clips),
            "drop_image_embeds": [int(d) for d in drop_image]}


def reference_loss(ip_adapter, vae, text_encoder, image_encoder, scheduler, batch, variant, latent_eps, noise,
                   timesteps):
    """One step of the reference loop body, with the VAE sample's normal draw, the noise and the timesteps
    given (the reference draws them from the global RNG)."""
    with torch.no_grad():
        dist = vae.encode(batch["images"]).latent_dist
        latents = (dist.mean + dist.std * latent_eps) * vae.config.scaling_factor
    noisy_latents = scheduler.add_noise(latents, noise, timesteps)
    if variant == "base":
        with torch.no_grad():
            image_embeds = image_encoder(batch["clip_images"]).image_embeds
        image_embeds = torch.stack([torch.zeros_like(e) if d == 1 else e
                                    for e, d in zip(image_embeds, batch["drop_image_embeds"], strict=True)])
    else:
        clip_images = torch.stack([torch.zeros_like(c) if d == 1 else c
                                   for c, d in zip(batch["clip_images"], batch["drop_image_embeds"], strict=True)])
        with torch.no_grad():
            image_embeds = image_encoder(clip_images, output_hidden_states=True).hidden_states[-2]
    with torch.no_grad():
        encoder_hidden_states = text_encoder(batch["text_input_ids"])[0]
    noise_pred = ip_adapter(noisy_latents, timesteps, encoder_hidden_states, image_embeds)
    return F.mse_loss(noise_pred.float(), noise.float(), reduction="mean"), latents
