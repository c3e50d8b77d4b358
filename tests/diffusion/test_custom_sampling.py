"""Schedulers' sigma values (ComfyUI's formulas, computed here by hand) and ModelSamplingDiscrete."""

from __future__ import annotations

import math

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

from ipgraph.engine import Graph
from ipgraph.nodes.core.types import Latent
from ipgraph.nodes.diffusion.samplers import ModelSampling, comfy_sigmas, kdiffusion_sigmas
from ipgraph.nodes.diffusion.sampling import ModelSamplingPatch, Plan, model_sampling_of, run_sampling

CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def test_model_sampling_table_and_maps():
    ms = ModelSampling(CONFIG)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    ac = ac.float()  # ComfyUI keeps alphas_cumprod in float32
    assert torch.allclose(ms.sigmas, ((1 - ac) / ac) ** 0.5)
    assert ms.timestep(float(ms.sigmas[321])) == 321
    assert math.isclose(ms.sigma(10.5), math.exp((math.log(ms.sigmas[10]) + math.log(ms.sigmas[11])) / 2),
                        rel_tol=1e-6)
    assert ms.percent_to_sigma(0.0) > 1e8 and ms.percent_to_sigma(1.0) == 0.0
    assert math.isclose(ms.percent_to_sigma(0.25), ms.sigma(0.75 * 999), rel_tol=1e-9)
    zsnr = ModelSampling(CONFIG, zsnr=True)
    assert math.isclose(float(zsnr.alphas_cumprod[-1]), 4.8973451890853435e-08, rel_tol=1e-4)


def test_comfyui_schedules():
    ms = ModelSampling(CONFIG)
    s = ms.sigmas
    simple = comfy_sigmas(ms, "simple", 4)
    assert torch.allclose(simple, torch.tensor([s[999], s[749], s[499], s[249], 0.0]))
    ddim = comfy_sigmas(ms, "ddim_uniform", 4)
    assert torch.allclose(ddim, torch.tensor([s[751], s[501], s[251], s[1], 0.0]))
    normal = comfy_sigmas(ms, "normal", 3)
    assert torch.allclose(normal, torch.tensor([s[999], ms.sigma(499.5), s[0], 0.0]))
    sgm = comfy_sigmas(ms, "sgm_uniform", 3)
    assert torch.allclose(sgm, torch.tensor([s[999], ms.sigma(666), ms.sigma(333), 0.0]))
    rho = 7.0
    ramp = torch.linspace(0, 1, 5)
    karras = (s[-1] ** (1 / rho) + ramp * (s[0] ** (1 / rho) - s[-1] ** (1 / rho))) ** rho
    assert torch.allclose(comfy_sigmas(ms, "karras", 5)[:-1], karras)
    expo = comfy_sigmas(ms, "exponential", 5)[:-1]
    assert torch.allclose(expo.log(), torch.linspace(math.log(s[-1]), math.log(s[0]), 5), atol=1e-5)
    beta = comfy_sigmas(ms, "beta", 6)
    assert beta[0] == s[999] and beta[-1] == 0 and (beta[:-1].diff() < 0).all()
    dpm2 = kdiffusion_sigmas(ms, "dpm_2", "simple", 4)  # one step more, penultimate dropped
    assert torch.allclose(dpm2, torch.cat([comfy_sigmas(ms, "simple", 5)[:-2], torch.zeros(1)]))


def test_scheduler_nodes(engine):
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
    g.add("BasicScheduler", id="half", model=ck.model, scheduler="simple", steps=4, denoise=0.5)
    g.add("SDTurboScheduler", id="turbo", model=ck.model, steps=2, denoise=0.8)
    g.add("KarrasScheduler", id="karras", steps=5, sigma_max=14.614642, sigma_min=0.0291675, rho=7.0)
    g.add("BasicScheduler", id="karras_model", model=ck.model, scheduler="karras", steps=5, denoise=1.0)
    g.add("BasicScheduler", id="none", model=ck.model, scheduler="simple", steps=4, denoise=0.0)
    out = engine.run(g, outputs=["ckpt", "half", "turbo", "karras", "karras_model", "none"]).outputs
    ms = ModelSampling(out["ckpt"].model.scheduler_config)
    assert len(out["none"].SIGMAS.values) == 0
    half = out["half"].SIGMAS
    assert torch.allclose(half.values, comfy_sigmas(ms, "simple", 8)[-5:]) and half.plan == Plan("simple", 8, 4)
    turbo = out["turbo"].SIGMAS.values  # 10 - int(10 * 0.8) = 2: timesteps 799, 699
    assert torch.allclose(turbo, torch.tensor([ms.sigma(799), ms.sigma(699), 0.0]))
    assert torch.allclose(out["karras"].SIGMAS.values, out["karras_model"].SIGMAS.values, rtol=1e-4)
    assert out["karras"].SIGMAS.plan is None


def test_model_sampling_discrete_is_a_patch_and_v_prediction_matches_diffusers(engine):
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
    g.add("CLIPTextEncode", id="pos", clip=ck.clip, text="a bear")
    g.add("CLIPTextEncode", id="neg", clip=ck.clip, text="blurry")
    g.add("ModelSamplingDiscrete", id="v", model=ck.model, sampling="v_prediction", zsnr=False)
    out = engine.run(g, outputs=["ckpt", "pos", "neg", "v"]).outputs
    model, v_model = out["ckpt"].model, out["v"].MODEL
    assert model.patches == () and v_model.unet is model.unet and model_sampling_of(v_model).kind == "v_prediction"
    pos, neg = out["pos"].CONDITIONING, out["neg"].CONDITIONING
    latent = Latent(torch.zeros(1, 4, 8, 8))
    got = run_sampling(v_model, pos, neg, latent, cfg=5.0, sampler="euler", plan=Plan("normal", 3), seed=2,
                       device="cpu", dtype=torch.float32).samples
    clip, vae = out["ckpt"].clip, out["ckpt"].vae
    pipe = StableDiffusionPipeline(
        vae=vae.vae, text_encoder=clip.text_encoders[0], tokenizer=clip.tokenizers[0], unet=model.unet,
        scheduler=EulerDiscreteScheduler.from_config(model.scheduler_config, prediction_type="v_prediction"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    expected = pipe(prompt_embeds=pos.embeds, negative_prompt_embeds=neg.embeds, height=64, width=64,
                    num_inference_steps=3, guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(2),
                    output_type="latent").images
    assert (got - expected).abs().max() <= 1e-4
    for kind in ("lcm", "x0"):  # k-diffusion path: ComfyUI's x0 formulas
        other = run_sampling(model.with_patch(ModelSamplingPatch(kind)), pos, neg, latent, cfg=5.0, sampler="lcm",
                             plan=Plan("normal", 3), seed=2, device="cpu", dtype=torch.float32).samples
        assert torch.isfinite(other).all() and (other - got).abs().max() > 1e-3
