"""ComfyUI's sampler/scheduler names vs diffusers' pipelines, and the sampler nodes against each other.

Every pair that ipgraph runs through a diffusers scheduler is compared with StableDiffusionPipeline built
with the scheduler spelled out here (class and options written independently of ipgraph's table).
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from diffusers import StableDiffusionPipeline

from ipgraph.engine import Graph
from ipgraph.nodes.core.types import Latent
from ipgraph.nodes.diffusion.samplers import (
    SAMPLER_NAMES,
    SCHEDULE_NAMES,
    ModelSampling,
    canonical,
    comfy_sigmas,
    diffusers_overrides,
)
from ipgraph.nodes.diffusion.sampling import Plan, run_sampling

TOL = 1e-4
PROMPT, NEGATIVE = "a polar bear in the snow", "blurry"
pytestmark = pytest.mark.slow

# sampler -> (diffusers class, options); schedule -> options
EXPECTED_SAMPLERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "dpmpp_3m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "ddpm": ("DDPMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "uni_pc": ("UniPCMultistepScheduler", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    "uni_pc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
    "pndm": ("PNDMScheduler", {}),
}
EXPECTED_SCHEDULES = {
    "normal": {}, "karras": {"use_karras_sigmas": True}, "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True}, "sgm_uniform": {"timestep_spacing": "trailing"},
    "simple": {"timestep_spacing": "trailing"}, "ddim_uniform": {"timestep_spacing": "leading", "steps_offset": 1},
}
KDIFFUSION_ONLY = {"dpmpp_2s_ancestral", "dpmpp_sde"}


@pytest.fixture(scope="module")
def sd15(models_dir):
    from ipgraph.engine import REGISTRY, Engine
    from ipgraph.nodes.core.runtime import Runtime

    runtime = Runtime.create(models_dir=models_dir, device="cpu", dtype="float32")
    engine = Engine(REGISTRY, runtime)
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
    g.add("CLIPTextEncode", id="pos", clip=ck.clip, text=PROMPT)
    g.add("CLIPTextEncode", id="neg", clip=ck.clip, text=NEGATIVE)
    out = engine.run(g, outputs=["ckpt", "pos", "neg"]).outputs
    return engine, out["ckpt"], out["pos"].CONDITIONING, out["neg"].CONDITIONING


def max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def test_every_diffusers_pair_matches_the_pipeline(sd15, capsys):
    engine, ck, pos, neg = sd15
    pipe = StableDiffusionPipeline(vae=ck.vae.vae, text_encoder=ck.clip.text_encoders[0],
                                   tokenizer=ck.clip.tokenizers[0], unet=ck.model.unet, scheduler=None,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    latent = Latent(torch.zeros(1, 4, 8, 8))
    expected_cache, table = {}, []
    for sampler in SAMPLER_NAMES:
        base = canonical(sampler)
        if base in KDIFFUSION_ONLY:
            assert diffusers_overrides(sampler, "normal") is None
            continue
        if base != sampler:  # the _gpu spellings are the same samplers
            assert diffusers_overrides(sampler, "karras") == diffusers_overrides(base, "karras")
            continue
        class_name, options = EXPECTED_SAMPLERS[sampler]
        keys = getattr(diffusers, class_name).from_config({}).config
        for schedule in SCHEDULE_NAMES:
            extra = EXPECTED_SCHEDULES[schedule]
            supported = all(k in keys for k in extra)
            assert (diffusers_overrides(sampler, schedule) is not None) == supported, (sampler, schedule)
            if not supported:
                continue
            key = (sampler, tuple(sorted(extra.items())))
            if key not in expected_cache:
                pipe.scheduler = getattr(diffusers, class_name).from_config(ck.model.scheduler_config,
                                                                            **options, **extra)
                expected_cache[key] = pipe(
                    prompt_embeds=pos.embeds, negative_prompt_embeds=neg.embeds, height=64, width=64,
                    num_inference_steps=2, guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(7),
                    output_type="latent").images
            got = run_sampling(ck.model, pos, neg, latent, cfg=7.0, sampler=sampler, plan=Plan(schedule, 2), seed=7,
                               device="cpu", dtype=torch.float32).samples
            table.append((sampler, schedule, max_diff(got, expected_cache[key])))
    with capsys.disabled():
        print("\nsampler/scheduler max |ipgraph - diffusers| on latents (2 steps, 64 px):")
        for sampler, schedule, diff in table:
            print(f"  {sampler:16s} {schedule:13s} {diff:.2e}")
    assert len(table) == 90
    assert all(diff <= TOL for _, _, diff in table), [t for t in table if t[2] > TOL]


def _sampler_graph(*, kind="ksampler", sampler="euler", schedule="normal", steps=6, split=None, seed=5):
    g = Graph()
    ck = g.add("LoadCheckpoint", id="ckpt", name="tiny-sd15.safetensors")
    pos = g.add("CLIPTextEncode", id="pos", clip=ck.clip, text=PROMPT).conditioning
    neg = g.add("CLIPTextEncode", id="neg", clip=ck.clip, text=NEGATIVE).conditioning
    lat = g.add("EmptyLatentImage", id="lat", width=64, height=64).latent
    common = dict(cfg=7.0, sampler_name=sampler, scheduler=schedule, positive=pos, negative=neg)
    if kind == "ksampler":
        g.add("KSampler", id="out", model=ck.model, seed=seed, steps=steps, latent_image=lat, **common)
    elif kind == "advanced":
        first = g.add("KSamplerAdvanced", id="a", model=ck.model, add_noise="enable", noise_seed=seed, steps=steps,
                      latent_image=lat, start_at_step=0, end_at_step=split, return_with_leftover_noise="enable",
                      **common)
        g.add("KSamplerAdvanced", id="out", model=ck.model, add_noise="disable", noise_seed=seed, steps=steps,
              latent_image=first.LATENT, start_at_step=split, end_at_step=10000,
              return_with_leftover_noise="disable", **common)
    else:
        select = g.add("KSamplerSelect", id="sel", sampler_name=sampler)
        sigmas = g.add("BasicScheduler", id="sig", model=ck.model, scheduler=schedule, steps=steps, denoise=1.0)
        if kind == "custom":
            g.add("SamplerCustom", id="out", model=ck.model, add_noise=True, noise_seed=seed, cfg=7.0, positive=pos,
                  negative=neg, sampler=select.SAMPLER, sigmas=sigmas.SIGMAS, latent_image=lat)
        else:
            noise = g.add("RandomNoise", id="noise", noise_seed=seed)
            guider = g.add("CFGGuider", id="guider", model=ck.model, positive=pos, negative=neg, cfg=7.0)
            g.add("SamplerCustomAdvanced", id="out", noise=noise.NOISE, guider=guider.GUIDER, sampler=select.SAMPLER,
                  sigmas=sigmas.SIGMAS, latent_image=lat)
    return g


def _latent(engine, graph):
    out = engine.run(graph, outputs=["out"]).outputs["out"]
    return (out.LATENT if hasattr(out, "LATENT") else out.output).samples


# (euler, ddim): diffusers schedulers (VE and VP samples); (ddim, karras): k-diffusion euler on sigmas
@pytest.mark.parametrize("sampler,schedule", [("euler", "normal"), ("ddim", "normal"), ("ddim", "karras")])
def test_ksampler_advanced_in_two_passes_equals_one_ksampler(sd15, sampler, schedule):
    engine = sd15[0]
    one = _latent(engine, _sampler_graph(sampler=sampler, schedule=schedule))
    two = _latent(engine, _sampler_graph(kind="advanced", sampler=sampler, schedule=schedule, split=3))
    half = engine.run(_sampler_graph(kind="advanced", sampler=sampler, schedule=schedule, split=3),
                      outputs=["a"]).outputs["a"].LATENT.samples
    assert max_diff(one, two) <= TOL
    assert max_diff(half, one) > 1e-2  # the first pass really stops half way, noise left in


@pytest.mark.parametrize("sampler,schedule", [("euler", "normal"), ("dpmpp_2m", "karras"),
                                              ("euler_ancestral", "karras"), ("dpmpp_2s_ancestral", "simple")])
def test_sampler_custom_equals_ksampler(sd15, sampler, schedule):
    engine = sd15[0]
    reference = _latent(engine, _sampler_graph(sampler=sampler, schedule=schedule, steps=4))
    custom = _latent(engine, _sampler_graph(kind="custom", sampler=sampler, schedule=schedule, steps=4))
    advanced = _latent(engine, _sampler_graph(kind="custom_advanced", sampler=sampler, schedule=schedule, steps=4))
    assert torch.isfinite(reference).all()
    assert max_diff(custom, reference) <= TOL
    assert max_diff(advanced, reference) <= TOL


def test_every_kdiffusion_sampler_runs_on_karras_sigmas(sd15):
    """KarrasScheduler's SIGMAS always run k-diffusion; each sampler gives its own finite result."""
    engine, ck, pos, neg = sd15
    ms = ModelSampling(ck.model.scheduler_config)
    sigmas = comfy_sigmas(ms, "karras", 4)
    results = {}
    for sampler in ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
                    "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "lcm"]:
        got = run_sampling(ck.model, pos, neg, Latent(torch.zeros(1, 4, 8, 8)), cfg=7.0, sampler=sampler,
                           plan=sigmas, seed=3, device="cpu", dtype=torch.float32)
        assert torch.isfinite(got.samples).all(), sampler
        results[sampler] = got.samples
    # DDPM's ancestral step is euler_ancestral's (eta 1) rewritten in VP space: the same numbers
    assert max_diff(results["ddpm"], results["euler_ancestral"]) <= TOL
    names = [n for n in results if n != "ddpm"]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert max_diff(results[a], results[b]) > 1e-3, (a, b)
