"""The real models' fixed configuration that single-file checkpoints do not carry: scheduler configs and VAE
scaling factors of SD1.5 and SDXL (copied from the official repositories' config files)."""

from __future__ import annotations

SD15_SCHEDULER_CONFIG = {  # stable-diffusion-v1-5 scheduler/scheduler_config.json
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
}
SDXL_SCHEDULER_CONFIG = {  # stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
SD15_VAE_SCALING = 0.18215
SDXL_VAE_SCALING = 0.13025


def scheduler_config(arch: str) -> dict:
    """The real scheduler config of the architecture (a fresh copy)."""
    return dict(SDXL_SCHEDULER_CONFIG if arch == "sdxl" else SD15_SCHEDULER_CONFIG)
