"""The diffusion family: checkpoint and VAE loaders, text encoding, ComfyUI's conditioning nodes
(conditioning_ops), KSampler/KSamplerAdvanced and the sampling loop (sampling, guidance, samplers,
kdiffusion), the custom-sampling nodes (custom_sampling), latents, VAE encode/decode and inpainting."""
