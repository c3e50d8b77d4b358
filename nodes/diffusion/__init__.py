"""The diffusion family: checkpoint and VAE loaders, text encoding, KSampler and its samplers, latents,
VAE encode/decode and inpainting conditioning."""
