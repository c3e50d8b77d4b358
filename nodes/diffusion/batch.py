"""Several jobs' KSampler / KSamplerAdvanced calls as one batch (the engine's ``run_batch``).

When queued graphs differ only in the sampler's seed (a seed sweep, several users on one workflow), their
sampling runs as one UNet batch: the jobs' latents are stacked in the batch dimension, each job's noise (the
initial noise and any per-step noise) is drawn from its own seed exactly as it would be alone, and the result is
split back, one latent per job. Everything else the calls share is the same object (the model handle, the
conditionings, the other widgets), so per image the computation is the one the job would do alone. One thing depends on the batch size on CPU:
matrix products with few rows (the UNet's time-embedding layers take ``[batch, C]``) pick a different BLAS kernel
for 2 rows than for 8, which changes the last bit; :func:`per_job_linears` runs those layers per job on the
rows the job alone would give them, so a batched job's latents are bit-identical to the job run alone
(tests/diffusion/test_batch.py; 3-D inputs, convolutions, norms and attention do not depend on the batch).

A group is declined (each job then runs alone) when per-image results could depend on the batch: patches other
than LoRA / ModelSamplingDiscrete / IP-Adapter with one reference batch row and no per-latent options,
conditioning or ControlNet masks/hints with per-image rows, per-image noise masks, latents of different sizes, or
jobs of more than one image each (their batched latents differ from the job alone by up to ~1e-2 on the tiny
model: some product still sees the batch; not chased yet).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ipgraph.engine import REGISTRY

from ..core.types import Conditioning, Latent, ModelHandle
from ..core.widgets import runtime_of
from .sampling import (
    KSamplerAdvancedIn,
    KSamplerIn,
    LatentOut,
    Plan,
    _control_models,
    check_job_size,
    check_latent_fits_model,
    latent_preview,
    run_sampling,
    with_inpaint_concat,
)


def _rows(t: torch.Tensor | None) -> int:
    return 1 if t is None or t.ndim < 3 else int(t.shape[0])


def _patches_batch_free(model: ModelHandle) -> bool:
    from ..lora.patch import WeightPatch
    from .sampling import ModelSamplingPatch

    for p in model.patches:
        if isinstance(p, (WeightPatch, ModelSamplingPatch)):
            continue
        from ..ipadapter.patch import IPAdapterPatch

        if isinstance(p, IPAdapterPatch) and not p.unfold_batch and p.frame_weights is None and _rows(p.mask) == 1:
            continue
        return False
    return True


def _cond_batch_free(cond: Conditioning | None) -> bool:
    if cond is None:
        return True
    for entry in cond.entries:
        if _rows(entry.mask) != 1:
            return False
        for control in entry.controls:
            if int(getattr(control, "hint", torch.zeros(1)).shape[0]) != 1 or _rows(getattr(control, "mask", None)) != 1:
                return False
    return True


def batchable(model: ModelHandle, positive, negative, latents: list[Latent], sampler: str, plan) -> bool:
    """Whether these jobs' sampling gives each job what it would get alone when run as one batch."""
    first = latents[0]
    if any(tuple(lat.samples.shape) != tuple(first.samples.shape) for lat in latents):
        return False
    if any(lat.noise_mask is not first.noise_mask for lat in latents) or _rows(first.noise_mask) != 1:
        return False
    if any((lat.concat is None) != (first.concat is None) for lat in latents):
        return False
    if not (_patches_batch_free(model) and _cond_batch_free(positive) and _cond_batch_free(negative)):
        return False
    if first.samples.shape[0] > 1:  # jobs of several images each: not bit-identical yet (measured), run alone
        return False
    return True


@contextmanager
def per_job_linears(modules, jobs: int, rows: int):
    """While sampling ``jobs`` jobs of ``rows`` images each: every ``nn.Linear`` of ``modules`` given a 2-D
    input of ``k * jobs * rows`` rows (k groups, e.g. [negative..., positive...], each in job order) computes
    each job's ``k * rows`` rows in one product, as that job alone would. Instance attributes, removed after."""
    linears = [m for mod in modules for m in mod.modules() if type(m) is torch.nn.Linear]
    span = jobs * rows

    def forward_of(lin):
        def forward(x):
            if x.ndim < 2 or x.shape[0] <= rows or x.shape[0] % span:
                return F.linear(x, lin.weight, lin.bias)
            k, tail = x.shape[0] // span, x.shape[1:]
            per_job = x.reshape(k, jobs, rows, *tail).transpose(0, 1).reshape(jobs, k * rows, *tail)
            out = torch.stack([F.linear(part.clone(), lin.weight, lin.bias) for part in per_job])
            return out.reshape(jobs, k, rows, *out.shape[2:]).transpose(0, 1).reshape(x.shape[0], *out.shape[2:])
        return forward

    try:
        for lin in linears:
            lin.forward = forward_of(lin)
        yield
    finally:
        for lin in linears:
            lin.__dict__.pop("forward", None)


def sample_batch(ctxs, model: ModelHandle, positive, negative, latents: list[Latent], *, cfg, sampler, plan, seeds,
                 runtime, add_noise: bool = True) -> list[torch.Tensor] | None:
    """``sample_node`` for several jobs at once: one result per job, or None when they cannot share a batch."""
    if not batchable(model, positive, negative, latents, sampler, plan):
        return None
    steps = plan.stop - plan.start
    for lat in latents:
        check_job_size(lat, max(0, steps), runtime)
    latents = [with_inpaint_concat(lat, model) for lat in latents]
    split = [int(lat.samples.shape[0]) for lat in latents]
    stacked = latents[0].replace(
        samples=torch.cat([lat.samples for lat in latents]),
        concat=None if latents[0].concat is None else torch.cat([lat.concat for lat in latents]))
    offsets = [sum(split[:j]) for j in range(len(split))]

    def on_step(i: int, total: int, x0: torch.Tensor) -> None:
        for ctx, start, b in zip(ctxs, offsets, split, strict=True):
            ctx.progress(i, total, preview=latent_preview(x0[start:start + b], model.arch))

    conds = [c for c in (positive, negative) if c is not None]
    controls = _control_models(*conds)
    if hasattr(runtime, "prepare"):
        runtime.prepare(model.unet)
    with runtime.models.on_device(model.unet, *controls), per_job_linears([model.unet, *controls], len(split),
                                                                           split[0]):
        result = run_sampling(model, positive, negative, stacked, cfg=cfg, sampler=sampler, plan=plan,
                              seed=[int(s) for s in seeds], add_noise=add_noise, device=runtime.device,
                              dtype=runtime.dtype, on_step=on_step, split=split)
    return [part.clone() for part in result.samples.split(split)]


SOCKETS = ("model", "positive", "negative")


def _same(inputs: list, names: tuple[str, ...]) -> bool:
    """The calls share these inputs: the same objects for sockets (one upstream output), equal widgets."""
    first = inputs[0]
    return all(getattr(inp, n) is getattr(first, n) or (n not in SOCKETS and getattr(inp, n) == getattr(first, n))
               for inp in inputs[1:] for n in names)


def ksampler_batch(inputs: list[KSamplerIn], ctxs: list) -> list[LatentOut] | None:
    first = inputs[0]
    if not _same(inputs, ("model", "positive", "negative", "steps", "cfg", "sampler_name", "scheduler", "denoise")):
        return None
    if first.denoise <= 0:
        return None
    for inp in inputs:
        check_latent_fits_model(inp.latent_image, inp.model)
    total = first.steps if first.denoise >= 0.9999 else int(first.steps / first.denoise)
    plan = Plan(first.scheduler, total, start=total - first.steps)
    parts = sample_batch(ctxs, first.model, first.positive, first.negative, [i.latent_image for i in inputs],
                         cfg=first.cfg, sampler=first.sampler_name, plan=plan, seeds=[i.seed for i in inputs],
                         runtime=runtime_of(ctxs[0]))
    if parts is None:
        return None
    return [LatentOut(LATENT=inp.latent_image.replace(samples=p)) for inp, p in zip(inputs, parts, strict=True)]


def ksampler_advanced_batch(inputs: list[KSamplerAdvancedIn], ctxs: list) -> list[LatentOut] | None:
    first = inputs[0]
    if not _same(inputs, ("model", "positive", "negative", "add_noise", "steps", "cfg", "sampler_name", "scheduler",
                          "start_at_step", "end_at_step", "return_with_leftover_noise")):
        return None
    for inp in inputs:
        check_latent_fits_model(inp.latent_image, inp.model)
    plan = Plan(first.scheduler, first.steps, start=first.start_at_step, end=first.end_at_step,
                zero_end=first.return_with_leftover_noise != "enable")
    if plan.start >= plan.stop:
        return None
    parts = sample_batch(ctxs, first.model, first.positive, first.negative, [i.latent_image for i in inputs],
                         cfg=first.cfg, sampler=first.sampler_name, plan=plan,
                         seeds=[i.noise_seed for i in inputs], runtime=runtime_of(ctxs[0]),
                         add_noise=first.add_noise == "enable")
    if parts is None:
        return None
    return [LatentOut(LATENT=inp.latent_image.replace(samples=p)) for inp, p in zip(inputs, parts, strict=True)]


REGISTRY.set_batch("KSampler", ("seed",), ksampler_batch)
REGISTRY.set_batch("KSamplerAdvanced", ("noise_seed",), ksampler_advanced_batch)
